package testbed

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/moby/sys/mountinfo"
)

// WritePlainHTTPHost writes <dir>/<host>/hosts.toml (containerd's
// hosts.toml layout, which lazypulld's [remote] hosts_dir reads too) saying
// that the registry host ("127.0.0.1:<port>") speaks plain HTTP.
func WritePlainHTTPHost(dir, host string) error {
	d := filepath.Join(dir, host)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return err
	}
	server := strconv.Quote("http://" + host)
	return writeFile(filepath.Join(d, "hosts.toml"), fmt.Sprintf(
		"server = %s\n\n[host.%s]\n  capabilities = [\"pull\", \"resolve\"]\n", server, server))
}

// LazypulldRemoteConfig returns a lazypulld config.toml that reads registry
// hosts from hostsDir and gives up quickly on a registry that does not
// answer, as a test wants.
func LazypulldRemoteConfig(hostsDir string) string {
	return fmt.Sprintf("[remote]\nhosts_dir = %s\nrequest_timeout = \"20s\"\nretries = 1\n", strconv.Quote(hostsDir))
}

// LazyMountFSType is the file system type lazypulld's FUSE layer mounts have
// in /proc/self/mountinfo; their source is "lazypull:<layer digest>".
const LazyMountFSType = "fuse.lazypull"

// LazyMounts returns the lazypulld layer mounts at or below dir.
func LazyMounts(dir string) ([]*mountinfo.Info, error) {
	return mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		under := m.Mountpoint == dir || len(m.Mountpoint) > len(dir) && m.Mountpoint[:len(dir)+1] == dir+"/"
		return !under || m.FSType != LazyMountFSType, false
	})
}
