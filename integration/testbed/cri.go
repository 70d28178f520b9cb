package testbed

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/lazypull/lazypull/contrib"
)

// CRIOptions turns containerd's CRI plugin on (ContainerdOptions.CRI). The
// CRI plugin serves on containerd's socket (Containerd.Address), in
// containerd namespace CRINamespace; with lazypulld its snapshotter is
// lazypull.
type CRIOptions struct {
	// SandboxImage is the pause image of pod sandboxes: one the test built
	// and pushed, never a public registry's.
	SandboxImage string
}

// CRINamespace is the containerd namespace of the CRI plugin's images and
// containers.
const CRINamespace = "k8s.io"

// criConfig returns the CRI plugin's settings that belong to the bed rather
// than to lazypull: its pause image, no CNI (pods use the host's network),
// runc state inside the bed's directory, image usage collected every
// second (the default is 10s) and no OOM score below containerd's (the
// pause container's -998 needs CAP_SYS_RESOURCE, which the tests may run
// without).
func (c *Containerd) criConfig(o CRIOptions, hostsDir string) string {
	q := strconv.Quote
	cni := fmt.Sprintf("  bin_dir = %s\n  conf_dir = %s\n", q(filepath.Join(c.Dir, "cni", "bin")), q(filepath.Join(c.Dir, "cni", "net.d")))
	runc := fmt.Sprintf("  runtime_type = \"io.containerd.runc.v2\"\n\n[%%s.containerd.runtimes.runc.options]\n  Root = %s\n", q(c.RuncRoot))
	if c.Flavour.ConfigVersion >= 3 {
		images, rt := "plugins.'io.containerd.cri.v1.images'", "plugins.'io.containerd.cri.v1.runtime'"
		return fmt.Sprintf("[%s]\n  stats_collect_period = 1\n\n[%s.pinned_images]\n  sandbox = %s\n\n", images, images, q(o.SandboxImage)) +
			fmt.Sprintf("[%s.registry]\n  config_path = %s\n\n", images, q(hostsDir)) +
			fmt.Sprintf("[%s]\n  restrict_oom_score_adj = true\n\n[%s.cni]\n%s\n", rt, rt, cni) +
			fmt.Sprintf("[%s.containerd.runtimes.runc]\n"+runc+"\n", rt, rt)
	}
	cri := `plugins."io.containerd.grpc.v1.cri"`
	return fmt.Sprintf("[%s]\n  sandbox_image = %s\n  stats_collect_period = 1\n  restrict_oom_score_adj = true\n\n", cri, q(o.SandboxImage)) +
		fmt.Sprintf("[%s.cni]\n%s\n", cri, cni) +
		fmt.Sprintf("[%s.containerd.runtimes.runc]\n"+runc+"\n", cri, cri)
}

// lazypullConfig returns the lazypull configuration of contrib/containerd
// for f with the bed's socket, root and hosts directory in place of the
// defaults it names. A default that is not in the file is an error: the
// file and the bed have drifted apart.
func lazypullConfig(f Flavour, opts ContainerdOptions) (string, error) {
	if f.ConfigVersion >= 3 {
		return substitute("containerd/config-v3.toml", contrib.ContainerdV3, contrib.DefaultSocket, opts.LazypullSocket,
			contrib.DefaultRoot, opts.LazypullRoot, contrib.DefaultHostsDir, opts.HostsDir)
	}
	// Sections merged into config.toml, which has its version line.
	return substitute("containerd/config-v2.toml", contrib.ContainerdV2, "\nversion = 2\n", "\n",
		contrib.DefaultSocket, opts.LazypullSocket, contrib.DefaultRoot, opts.LazypullRoot,
		contrib.DefaultHostsDir, opts.HostsDir)
}

// substitute replaces in text, the content of contrib file name, each
// default path of fromTo (pairs of default and replacement) with the bed's.
// A default that is not in the file is an error: the file and the bed have
// drifted apart.
func substitute(name, text string, fromTo ...string) (string, error) {
	for i := 0; i+1 < len(fromTo); i += 2 {
		from, to := fromTo[i], fromTo[i+1]
		if !strings.Contains(text, from) {
			return "", fmt.Errorf("contrib/%s does not name %s", name, from)
		}
		text = strings.ReplaceAll(text, from, to)
	}
	return text, nil
}
