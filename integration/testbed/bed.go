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
	b := &Bed{Registry: StartRegistry(t)}
	copts := ContainerdOptions{Flavour: opts.Flavour, Dir: Dir(t, "ctrd")}
	if opts.LazypulldBinary != "" {
		cfg := opts.LazypulldConfig
		if !strings.Contains(cfg, "[containerd]") {
			cfg += fmt.Sprintf("\n[containerd]\naddress = %s\nsnapshotter = %s\n",
				strconv.Quote(containerdAddress(copts.Dir)), strconv.Quote(SnapshotterName))
		}
		b.Lazypulld = StartLazypulld(t, LazypulldOptions{Binary: opts.LazypulldBinary, Config: cfg})
		copts.LazypullSocket, copts.LazypullRoot = b.Lazypulld.Socket, b.Lazypulld.Root
	}
	b.Containerd = StartContainerd(t, copts)
	return b
}
