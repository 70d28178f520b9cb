package integration

import (
	"context"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/lazypull/lazypull/integration/testbed"
	"github.com/lazypull/lazypull/integration/testimage"
)

// TestLazyPullAndRun converts the test image with `lazypull convert`, pulls
// it into lazypull the way a user of each containerd does (1.6: `lazypull
// pull`; 2.x: plain `ctr image pull`) and requires the pull to be lazy:
// every layer a remote snapshot with its own FUSE mount and no layer blob in
// containerd's content store. The container must then read every probed
// file with the content the image was built from, and the root filesystem
// lazypull presents must equal what containerd's overlayfs snapshotter
// makes of the original (not converted) image.
func TestLazyPullAndRun(t *testing.T) {
	forEachFlavour(t, func(t *testing.T, f testbed.Flavour) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		lb := newLazyBed(t, f, lazyBedOptions{})
		ctrd := lb.Containerd
		orig, img := pushDefaultImage(t, ctx, lb.Registry)
		ref := convertImage(t, ctx, orig, lb.Registry.Ref("lazypull/testimage:esgz"))

		cl := ctrd.Client(t)
		nctx := namespaces.WithNamespace(ctx, ctrd.Namespace)
		if f.ConfigVersion < 3 {
			rows := lazypullPull(t, ctx, lb, ref)
			for _, r := range rows {
				if r.Lazy != "yes" {
					t.Errorf("lazypull pull: layer %s not lazy: %s", r.Layer, r.Reason)
				}
			}
		} else {
			pullLazily(t, ctx, lb, ref)
		}
		pulled := inspectImage(t, nctx, cl, ref)
		if len(pulled.Layers) != len(img.layers) {
			t.Fatalf("converted image has %d layers, want %d", len(pulled.Layers), len(img.layers))
		}
		requireLazy(t, ctx, lb, cl, pulled)

		out, err := runHashfiles(ctx, lb, ref, "lazy-probe", testimage.ProbeFiles...)
		if err != nil {
			t.Fatal(err)
		}
		requireOutput(t, out, probeOutput(t, img.expected, testimage.ProbeFiles...))

		// The same tree as overlayfs makes of the original image.
		if err := ctrd.Pull(ctx, "overlayfs", orig); err != nil {
			t.Fatal(err)
		}
		lctx, done, err := cl.WithLease(nctx) // keeps the views from the GC
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = done(context.WithoutCancel(lctx)) })
		want := viewTree(t, lctx, cl, "overlayfs", img.chainIDs[len(img.chainIDs)-1].String())
		got := viewTree(t, lctx, cl, testbed.SnapshotterName, pulled.ChainIDs[len(pulled.ChainIDs)-1].String())
		if d := testimage.Diff(want, got); d != nil {
			t.Errorf("lazypull's rootfs of the converted image differs from overlayfs's of the original (want overlayfs, got lazypull):\n%s", limit(d, 50))
		}
	})
}

// TestLazyPullReadsLittle runs a container that reads one small file of the
// lazily pulled test image and requires the registry to have served less
// than a quarter of the image's compressed layer bytes from the start of
// the pull until the container's output is back, with read-ahead and
// background fetch off. A pull that downloads the layers (it is not lazy)
// or a read that fetches whole layers fails it.
func TestLazyPullReadsLittle(t *testing.T) {
	forEachFlavour(t, func(t *testing.T, f testbed.Flavour) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		// Background fetch and read-ahead fetch more than is read, by
		// design; what is measured here is what the reads themselves cost.
		lb := newLazyBed(t, f, lazyBedOptions{Front: true, NoBackgroundFetch: true})
		orig, img := pushDefaultImage(t, ctx, lb.Registry)
		convertImage(t, ctx, orig, lb.Registry.Ref("lazypull/testimage:esgz"))
		ref := lb.Front.Ref("lazypull/testimage:esgz") // counted

		before := lb.Front.BytesServed()
		pullLazily(t, ctx, lb, ref)
		out, err := runHashfiles(ctx, lb, ref, "lazy-little", "/data/hello")
		served := lb.Front.BytesServed() - before
		if err != nil {
			t.Fatal(err)
		}
		requireOutput(t, out, probeOutput(t, img.expected, "/data/hello"))

		pulled := inspectImage(t, namespaces.WithNamespace(ctx, lb.Containerd.Namespace), lb.Containerd.Client(t), ref)
		total := pulled.layerSize()
		t.Logf("registry served %d bytes for pull and run; the image's layers are %d bytes (%.1f%%)",
			served, total, 100*float64(served)/float64(total))
		if served*4 >= total {
			t.Errorf("registry served %d bytes for pull and run, not less than 25%% of the image's %d layer bytes", served, total)
		}
	})
}
