package integration

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lazypull/lazypull/integration/testbed"
	"github.com/lazypull/lazypull/integration/testimage"
)

// TestPullAndRun pulls the test image into lazypull through ctr (for 2.x
// through the transfer service) and runs it: the container must read every
// probed file with the content the image was built from, and the snapshots
// must be lazypulld's, not containerd's own.
func TestPullAndRun(t *testing.T) {
	forEachFlavour(t, func(t *testing.T, f testbed.Flavour) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		bed := testbed.New(t, testbed.Options{Flavour: f, LazypulldBinary: lazypulldBin})
		ref, img := pushDefaultImage(t, ctx, bed.Registry)
		ctrd := bed.Containerd

		if err := ctrd.Pull(ctx, testbed.SnapshotterName, ref); err != nil {
			t.Fatal(err)
		}
		// Served by lazypulld: it lists a committed snapshot per layer...
		snaps := listSnapshots(t, ctx, ctrd, testbed.SnapshotterName)
		for i, id := range img.chainIDs {
			if kind, ok := snaps[id.String()]; !ok || kind != "Committed" {
				t.Errorf("layer %d: lazypull has no committed snapshot %s (snapshots: %v)", i, id, snaps)
			}
		}
		// ...containerd's overlayfs snapshotter holds nothing...
		if s := listSnapshots(t, ctx, ctrd, "overlayfs"); len(s) != 0 {
			t.Errorf("overlayfs snapshotter holds snapshots %v; the image was unpacked into it", s)
		}
		// ...and the layers' data is in lazypulld's root.
		if n := regularBytes(t, bed.Lazypulld.Root); n < testimage.BigFileSize {
			t.Errorf("lazypulld root %s holds %d bytes of regular files, less than the image's big file (%d)",
				bed.Lazypulld.Root, n, testimage.BigFileSize)
		}

		out, err := ctrd.Run(ctx, testbed.SnapshotterName, ref, "hashfiles",
			append([]string{"/" + testimage.EntrypointPath}, testimage.ProbeFiles...)...)
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		for _, p := range testimage.ProbeFiles {
			n, err := img.expected.Lookup(p)
			if err != nil {
				t.Fatal(err)
			}
			want = append(want, n.Digest+"  "+p)
		}
		got := strings.Split(strings.TrimRight(out, "\n"), "\n")
		if !slices.Equal(got, want) {
			t.Errorf("container output differs from the image's files\ngot:\n%s\nwant:\n%s",
				strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	})
}

// listSnapshots returns KEY -> KIND from `ctr snapshots ls`.
func listSnapshots(t *testing.T, ctx context.Context, c *testbed.Containerd, snapshotter string) map[string]string {
	t.Helper()
	out, err := c.Ctr(ctx, "snapshots", "--snapshotter", snapshotter, "ls")
	if err != nil {
		t.Fatal(err)
	}
	snaps := map[string]string{}
	for i, line := range strings.Split(strings.TrimSpace(out), "\n") {
		fields := strings.Fields(line)
		if i == 0 || len(fields) < 2 { // header: KEY PARENT KIND
			continue
		}
		snaps[fields[0]] = fields[len(fields)-1]
	}
	return snaps
}

// regularBytes sums the sizes of the regular files under root, without
// crossing into mounts (a FUSE layer mounted there would answer from the
// registry, which is not what "held locally" means).
func regularBytes(t *testing.T, root string) int64 {
	t.Helper()
	mounts, err := testbed.MountsUnder(root)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed meanwhile
		}
		if err != nil {
			return err
		}
		if d.IsDir() && p != root && slices.Contains(mounts, p) {
			return filepath.SkipDir
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			if err != nil {
				return err
			}
			total += info.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return total
}
