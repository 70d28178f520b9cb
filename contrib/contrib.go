// Package contrib holds the configuration files that lazypull's README gives
// operators, for the integration test bed to load: the documented
// configuration is the tested one.
package contrib

import _ "embed"

// ContainerdV3 is the drop-in for containerd 2.x
// (containerd/config-v3.toml).
//
//go:embed containerd/config-v3.toml
var ContainerdV3 string

// ContainerdV2 holds the sections to merge into the config.toml of
// containerd 1.6 and 1.7 (containerd/config-v2.toml).
//
//go:embed containerd/config-v2.toml
var ContainerdV2 string

// DockerDaemon is Docker Engine's daemon.json for lazy pulls
// (docker/daemon.json).
//
//go:embed docker/daemon.json
var DockerDaemon string

// KubernetesLazypull is lazypulld's configuration on a Kubernetes node
// (kubernetes/config.toml): the CRI image service.
//
//go:embed kubernetes/config.toml
var KubernetesLazypull string

// The paths the files name: lazypulld's defaults, containerd's hosts
// directory and socket. A test bed replaces them with its own.
const (
	DefaultSocket           = "/run/lazypull/lazypull.sock"
	DefaultRoot             = "/var/lib/lazypull"
	DefaultHostsDir         = "/etc/containerd/certs.d"
	DefaultContainerdSocket = "/run/containerd/containerd.sock"
	DefaultCRISocket        = "/run/lazypull/cri.sock"
)
