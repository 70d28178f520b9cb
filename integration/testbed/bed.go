package testbed

import (
	"fmt"
	"strconv"
	"strings"
)

// Options configures New.
type Options struct {
	Flavour Flavour
	// LazypulldBinary, when set, starts lazypulld and registers it with
	// containerd as SnapshotterName. Without it the bed has only containerd's
	// built-in snapshotters (useful to test the bed itself).
	LazypulldBinary string
	LazypulldConfig string
	// HostsDir is the CRI plugin's registry hosts directory
	// (ContainerdOptions.HostsDir).
	HostsDir string
	// CRIPauseImage, when set, turns containerd's CRI plugin on, with the
	// image of this repository and tag in the bed's registry (e.g.
	// "lazypull/pause:1", which the test pushes) as the pods' pause image.
	CRIPauseImage string
	// CRIImageService, with CRIPauseImage, turns lazypulld's CRI image
	// service on (Lazypulld.CRISocket), forwarding to the bed's containerd.
	CRIImageService bool
	// RegistryAuth makes the registry require these credentials.
	RegistryAuth *RegistryAuth
}

// Bed is a registry, an optional lazypulld and a containerd wired to both.
type Bed struct {
	Registry   *Registry
	Lazypulld  *Lazypulld // nil without Options.LazypulldBinary
	Containerd *Containerd
}

// New starts a complete test bed for t. Cleanup stops containerd first,
// then lazypulld, then the registry. lazypulld's configuration gets a
// [containerd] table naming the bed's containerd, unless it has one.
func New(t T, opts Options) *Bed {
	t.Helper()
	b := &Bed{Registry: StartRegistryWith(t, RegistryOptions{Auth: opts.RegistryAuth})}
	copts := ContainerdOptions{Flavour: opts.Flavour, HostsDir: opts.HostsDir}
	if opts.CRIPauseImage != "" {
		copts.CRI = &CRIOptions{SandboxImage: b.Registry.Ref(opts.CRIPauseImage)}
	}
	if opts.LazypulldBinary != "" {
		// lazypulld talks to this containerd (to remove snapshots that
		// failed verification, and for the CRI image service): its
		// socket must be known ahead.
		copts.Dir = Dir(t, "ctrd")
		lopts := LazypulldOptions{Binary: opts.LazypulldBinary, Config: opts.LazypulldConfig}
		switch {
		case opts.CRIImageService && copts.CRI != nil:
			// contrib's Kubernetes configuration names containerd.
			lopts.CRIContainerdAddress = ContainerdSocket(copts.Dir)
		case !strings.Contains(lopts.Config, "[containerd]"):
			lopts.Config += fmt.Sprintf("\n[containerd]\naddress = %s\nsnapshotter = %s\n",
				strconv.Quote(ContainerdSocket(copts.Dir)), strconv.Quote(SnapshotterName))
		}
		b.Lazypulld = StartLazypulld(t, lopts)
		copts.LazypullSocket, copts.LazypullRoot = b.Lazypulld.Socket, b.Lazypulld.Root
	}
	b.Containerd = StartContainerd(t, copts)
	return b
}
