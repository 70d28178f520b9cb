// Package containerd holds the containerd configuration that lazypull's
// README gives operators, for the integration test bed to load: the
// documented configuration is the tested one.
package containerd

import _ "embed"

// ConfigV3 is the drop-in for containerd 2.x (config-v3.toml).
//
//go:embed config-v3.toml
var ConfigV3 string

// ConfigV2 holds the sections to merge into the config.toml of containerd
// 1.6 and 1.7 (config-v2.toml).
//
//go:embed config-v2.toml
var ConfigV2 string

// The paths the files name: lazypulld's defaults and containerd's hosts
// directory. A test bed replaces them with its own.
const (
	DefaultSocket   = "/run/lazypull/lazypull.sock"
	DefaultRoot     = "/var/lib/lazypull"
	DefaultHostsDir = "/etc/containerd/certs.d"
)
