package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/lazypull/lazypull/integration/testbed"
	"github.com/lazypull/lazypull/integration/testimage"
)

// TestSnapshotMatchesOverlayfs unpacks the test image with containerd's own
// overlayfs snapshotter and with lazypull, mounts a read-only View of the
// top layer of each through the snapshot service, and requires the two
// trees to be identical (types, modes incl. setuid, owners, xattrs, symlink
// targets, contents, mtimes of files, hardlink grouping) and equal to the
// tree the image was built to produce.
func TestSnapshotMatchesOverlayfs(t *testing.T) {
	forEachFlavour(t, func(t *testing.T, f testbed.Flavour) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		bed := testbed.New(t, testbed.Options{Flavour: f, LazypulldBinary: lazypulldBin})
		ref, img := pushDefaultImage(t, ctx, bed.Registry)
		ctrd := bed.Containerd
		cl := ctrd.Client(t)
		ctx = namespaces.WithNamespace(ctx, ctrd.Namespace)
		// A lease keeps the views from the garbage collector.
		ctx, done, err := cl.WithLease(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = done(context.WithoutCancel(ctx)) })

		top := img.chainIDs[len(img.chainIDs)-1].String()
		trees := map[string]testimage.Tree{}
		for _, sn := range []string{"overlayfs", testbed.SnapshotterName} {
			if err := ctrd.Pull(ctx, sn, ref); err != nil {
				t.Fatal(err)
			}
			ss := cl.SnapshotService(sn)
			key := "view-" + sn
			ms, err := ss.View(ctx, key, top)
			if err != nil {
				t.Fatalf("%s: view %s: %v", sn, top, err)
			}
			t.Cleanup(func() { // after the unmount, which is registered later
				if err := ss.Remove(context.WithoutCancel(ctx), key); err != nil {
					t.Errorf("%s: remove %s: %v", sn, key, err)
				}
			})
			dir := testbed.Mount(t, ms, true)
			tree, err := testimage.ReadTree(dir)
			if err != nil {
				t.Fatalf("%s: %v", sn, err)
			}
			trees[sn] = tree
		}

		if d := testimage.Diff(trees["overlayfs"], trees[testbed.SnapshotterName]); d != nil {
			t.Errorf("lazypull's view differs from overlayfs's (want overlayfs, got lazypull):\n%s", limit(d, 50))
		}
		for sn, tree := range trees {
			delete(tree, ".") // the image has no entry for the root
			if d := testimage.Diff(img.expected, tree); d != nil {
				t.Errorf("%s's view differs from the image's expected tree:\n%s", sn, limit(d, 50))
			}
		}
	})
}

func limit(lines []string, n int) string {
	if len(lines) > n {
		lines = append(lines[:n:n], "...")
	}
	return strings.Join(lines, "\n")
}
