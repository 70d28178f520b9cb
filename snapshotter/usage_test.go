package snapshotter

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// A remote snapshot's usage is what its layer's filesystem holds, as for a
// layer pulled normally (so that containerd, the CRI and Docker count it),
// and it stays after a restart; a layer that is only a bind mount of a
// directory of the same filesystem reports none.
func TestRemoteUsage(t *testing.T) {
	e := newRemoteEnv(t)
	ctx := testContext(t)
	// Layer a is a filesystem of its own, holding 1 MiB in two files.
	dir := e.fs.dirs["sha256:aa"]
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=16m"); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"x", "y"} {
		if err := os.WriteFile(filepath.Join(dir, f), make([]byte, 512<<10), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sn := e.open(t)
	unpackRemote(ctx, t, sn, "chain-a", "", "sha256:aa")
	unpackRemote(ctx, t, sn, "chain-b", "chain-a", "sha256:bb")

	check := func() {
		t.Helper()
		u, err := sn.Usage(ctx, "chain-a")
		if err != nil {
			t.Fatal(err)
		}
		if u.Size < 1<<20 || u.Size > 1<<20+64<<10 || u.Inodes < 3 {
			t.Errorf("usage of a remote layer of 1 MiB in 2 files: %+v", u)
		}
		if u, err := sn.Usage(ctx, "chain-b"); err != nil || u.Size != 0 {
			t.Errorf("usage of a layer bind-mounted from the same filesystem: %+v, %v; want 0", u, err)
		}
	}
	check()
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	sn = e.open(t)
	check()
}
