package integration

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/lazypull/lazypull/integration/testbed"
	"github.com/lazypull/lazypull/integration/testimage"
)

// upgradeVersion is the version of the second build of lazypulld.
const upgradeVersion = "v0.0.0-upgrade-test"

var (
	upgradeOnce sync.Once
	upgradeBin  string
	upgradeErr  error
)

// upgradedDaemon builds lazypulld again, as version upgradeVersion: a
// binary with another build id.
func upgradedDaemon(t *testing.T) string {
	t.Helper()
	upgradeOnce.Do(func() {
		upgradeBin = filepath.Join(filepath.Dir(lazypulldBin), "lazypulld-upgraded")
		flags := append([]string{"-ldflags=-X main.version=" + upgradeVersion}, daemonFlags...)
		upgradeErr = goBuild(upgradeBin, "../cmd/lazypulld", nil, flags...)
	})
	if upgradeErr != nil {
		t.Fatal(upgradeErr)
	}
	return upgradeBin
}

// TestUpgradeKeepsContainersReading replaces lazypulld by another build
// while a container reads from a lazily pulled image. The container keeps
// reading correct bytes; the new daemon adopts the old data plane for the
// layers it serves and starts one of its own build, which gets the layers
// of an image pulled after the upgrade; once the old image and its
// container are removed, the old data plane exits.
func TestUpgradeKeepsContainersReading(t *testing.T) {
	newBin := upgradedDaemon(t)
	forEachFlavour(t, func(t *testing.T, f testbed.Flavour) {
		ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
		defer cancel()
		lb := newLazyBed(t, f, lazyBedOptions{})
		orig, img := pushDefaultImage(t, ctx, lb.Registry)
		oldRef := convertImage(t, ctx, orig, lb.Registry.Ref("lazypull/testimage:esgz"))
		pullLazily(t, ctx, lb, oldRef)
		paths := testimage.ProbeFiles
		want := probeOutput(t, img.expected, paths...)
		r := startReader(t, lb, oldRef, "upgrade-reader")
		requireReads(t, r, paths, want, "before the upgrade")
		old := onePlane(t, ctx, lb)

		if err := lb.Lazypulld.Stop(); err != nil {
			t.Fatal(err)
		}
		lb.Lazypulld.UseBinary(newBin)
		if err := lb.Lazypulld.Start(t); err != nil {
			t.Fatal(err)
		}
		requireReads(t, r, paths, want, "after the upgrade")

		// An image pulled now is served by the new build's data plane.
		newRef, newWant := pushSmallImage(t, ctx, lb)
		pullLazily(t, ctx, lb, newRef)
		cl := lb.Containerd.Client(t)
		nctx := namespaces.WithNamespace(ctx, lb.Containerd.Namespace)
		newLayers := inspectImage(t, nctx, cl, newRef).Layers
		oldLayers := inspectImage(t, nctx, cl, oldRef).Layers
		dps, err := lb.Lazypulld.DataPlanes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(dps) != 2 {
			t.Fatalf("%d data planes after the upgrade, want the old one and a new one: %+v", len(dps), dps)
		}
		for _, dp := range dps {
			served := map[string]bool{}
			for _, m := range dp.Mounts {
				served[m.Labels["containerd.io/snapshot/cri.layer-digest"]] = true
			}
			mine, other := oldLayers, newLayers
			if dp.Info.PID != old.Info.PID {
				if dp.Info.Version != upgradeVersion {
					t.Errorf("new data plane is version %q, want %q", dp.Info.Version, upgradeVersion)
				}
				mine, other = newLayers, oldLayers
			}
			for _, l := range mine {
				if !served[l.Digest.String()] {
					t.Errorf("data plane %d (%s) does not serve layer %s", dp.Info.PID, dp.Info.Version, l.Digest)
				}
			}
			for _, l := range other {
				if served[l.Digest.String()] {
					t.Errorf("data plane %d (%s) serves layer %s of the other build's image", dp.Info.PID, dp.Info.Version, l.Digest)
				}
			}
		}
		out, err := runHashfiles(ctx, lb, newRef, "upgrade-new", "/upgrade/hello")
		if err != nil {
			t.Fatal(err)
		}
		requireOutput(t, out, newWant)
		requireReads(t, r, paths, want, "after a new image was pulled")

		// The old image goes: the old data plane serves nothing and exits.
		if err := r.stop(); err != nil {
			t.Fatal(err)
		}
		if _, err := lb.Containerd.Ctr(ctx, "image", "rm", "--sync", oldRef); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, ctx, "the old data plane to exit", func() bool { return processGone(old.Info.PID) })
	})
}

// pushSmallImage pushes and converts an image of one layer that no other
// test image shares, and returns its eStargz reference and what hashfiles
// prints for its /upgrade/hello.
func pushSmallImage(t *testing.T, ctx context.Context, lb *lazyBed) (string, string) {
	t.Helper()
	entry, err := os.ReadFile(entrypointBin)
	if err != nil {
		t.Fatal(err)
	}
	layers := []testimage.Layer{{Entries: []testimage.Entry{
		testimage.File(testimage.EntrypointPath, 0o755, entry),
		testimage.Dir("upgrade", 0o755),
		testimage.File("upgrade/hello", 0o644, []byte("pulled after the upgrade\n")),
	}}}
	img, err := testimage.Image(layers, []string{"/" + testimage.EntrypointPath})
	if err != nil {
		t.Fatal(err)
	}
	orig := lb.Registry.Ref("lazypull/small:1")
	if _, err := testimage.Push(ctx, orig, img); err != nil {
		t.Fatal(err)
	}
	ref := convertImage(t, ctx, orig, lb.Registry.Ref("lazypull/small:esgz"))
	tree, err := testimage.Flatten(layers)
	if err != nil {
		t.Fatal(err)
	}
	return ref, probeOutput(t, tree, "/upgrade/hello")
}
