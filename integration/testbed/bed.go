package testbed

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
// then lazypulld, then the registry.
func New(t T, opts Options) *Bed {
	t.Helper()
	b := &Bed{Registry: StartRegistry(t)}
	copts := ContainerdOptions{Flavour: opts.Flavour}
	if opts.LazypulldBinary != "" {
		b.Lazypulld = StartLazypulld(t, LazypulldOptions{Binary: opts.LazypulldBinary, Config: opts.LazypulldConfig})
		copts.LazypullSocket, copts.LazypullRoot = b.Lazypulld.Socket, b.Lazypulld.Root
	}
	b.Containerd = StartContainerd(t, copts)
	return b
}
