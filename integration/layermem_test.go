package integration

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/lazypull/lazypull/integration/testbed"
	"github.com/lazypull/lazypull/integration/testimage"
)

const (
	// layerMemFiles is the number of files of each layer TestLayerMemory
	// mounts, and layerMemLayers how many such layers it mounts.
	layerMemFiles  = 7000
	layerMemLayers = 4
	// layerMemMax bounds what a mounted layer of layerMemFiles files may
	// cost the data plane's live heap, and layerMemWalkedMax the same
	// once every file has been looked up (the kernel then holds an inode
	// of each, and the data plane a node), besides the read buffers of the
	// layer's FUSE server (fuseBuffers). Measured on 2 CPUs: about 8MiB
	// and 11.6MiB, of which 2MiB of buffers (README, "How it works"); twice
	// the rest is allowed.
	layerMemMax       = 12 << 20
	layerMemWalkedMax = 20 << 20
	// layerMemLeft is how much more live heap than before the data plane
	// may hold once the layers are removed.
	layerMemLeft = 2 << 20
)

// TestLayerMemory measures what a lazily pulled layer of 7,000 files costs
// the data plane: its live heap (after a garbage collection) and resident
// memory, per mounted layer, once mounted and once every file has been
// looked up; and requires the cost to stay within bounds and to be given
// back when the layers are removed. The data plane's memory does not
// depend on containerd: it is measured with 2.x only.
func TestLayerMemory(t *testing.T) {
	forEachFlavour(t, func(t *testing.T, f testbed.Flavour) {
		if f.ConfigVersion < 3 {
			t.Skip("the data plane's memory does not depend on containerd's version: measured with 2.x")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		// What is measured is the layers: no background fetch, and no
		// in-memory chunk cache to keep the entrypoint prefetch's chunks.
		lb := newLazyBed(t, f, lazyBedOptions{Tables: "[fs]\nbackground_fetch = false\nmemory_cache_size = 0\n"})
		refs := pushManyFileImages(t, ctx, lb, layerMemLayers)
		m := newMeter(t, ctx, lb)
		before := measureOrFail(t, ctx, m)
		for _, ref := range refs {
			pullLazily(t, ctx, lb, ref)
		}
		mounted := measureOrFail(t, ctx, m)
		walkLayers(t, lb)
		walked := measureOrFail(t, ctx, m)
		removeAll(t, ctx, lb, refsOf(refs))
		after := measureOrFail(t, ctx, m)

		perLayer := func(u usage) (heap, rss int64) {
			return (int64(u.rt.HeapAlloc) - int64(before.rt.HeapAlloc)) / layerMemLayers, (u.plane.RSS - before.plane.RSS) / layerMemLayers
		}
		mh, mr := perLayer(mounted)
		wh, wr := perLayer(walked)
		t.Logf("per mounted layer of %d files (%d layers): live heap %s, RSS %s; after a lookup of every file: live heap %s, RSS %s"+
			"\nbefore:  %v\nmounted: %v\nwalked:  %v\nremoved: %v",
			layerMemFiles, layerMemLayers, testbed.MiBString(mh), testbed.MiBString(mr), testbed.MiBString(wh), testbed.MiBString(wr),
			before, mounted, walked, after)
		if bound := layerMemMax + fuseBuffers(); mh > bound {
			t.Errorf("a mounted layer of %d files costs %s of live heap, more than %s", layerMemFiles, testbed.MiBString(mh), testbed.MiBString(bound))
		}
		if bound := layerMemWalkedMax + fuseBuffers(); wh > bound {
			t.Errorf("a layer of %d files, every one looked up, costs %s of live heap, more than %s", layerMemFiles, testbed.MiBString(wh), testbed.MiBString(bound))
		}
		if after.rt.HeapAlloc > before.rt.HeapAlloc+layerMemLeft {
			t.Errorf("live heap %s once the layers were removed, %s before", testbed.MiBString(int64(after.rt.HeapAlloc)), testbed.MiBString(int64(before.rt.HeapAlloc)))
		}
		if after.planeFDs.FUSE != 0 {
			t.Errorf("data plane holds %d /dev/fuse descriptors once the layers were removed", after.planeFDs.FUSE)
		}
	})
}

// fuseBuffers is what the read buffers of a layer's FUSE server may hold:
// go-fuse keeps one of the largest request (1MiB of data, the layer's
// MaxWrite, and headers) per goroutine reading /dev/fuse, of which it
// starts up to one per CPU, 2 to 16.
func fuseBuffers() int64 {
	return int64(min(max(runtime.NumCPU(), 2), 16)) * (1<<20 + 8<<10)
}

func measureOrFail(t *testing.T, ctx context.Context, m *meter) usage {
	t.Helper()
	u, err := m.measure(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func refsOf(refs []string) []loadImage {
	imgs := make([]loadImage, len(refs))
	for i, r := range refs {
		imgs[i].ref = r
	}
	return imgs
}

// pushManyFileImages pushes and converts n images of one layer of
// layerMemFiles small files each (in directories of 100), no file shared
// between them, and returns their eStargz references.
func pushManyFileImages(t *testing.T, ctx context.Context, lb *lazyBed, n int) []string {
	t.Helper()
	entry, err := os.ReadFile(entrypointBin)
	if err != nil {
		t.Fatal(err)
	}
	var refs []string
	for i := range n {
		es := []testimage.Entry{testimage.File(testimage.EntrypointPath, 0o755, entry)}
		for j := range layerMemFiles {
			if j%100 == 0 {
				es = append(es, testimage.Dir(fmt.Sprintf("d%02d", j/100), 0o755))
			}
			es = append(es, testimage.File(fmt.Sprintf("d%02d/file-%05d.txt", j/100, j), 0o644, fmt.Appendf(nil, "image %d file %d\n", i, j)))
		}
		img, err := testimage.Image([]testimage.Layer{{Entries: es}}, []string{"/" + testimage.EntrypointPath})
		if err != nil {
			t.Fatal(err)
		}
		orig := lb.Registry.Ref(fmt.Sprintf("lazypull/files%d:1", i))
		if _, err := testimage.Push(ctx, orig, img); err != nil {
			t.Fatal(err)
		}
		refs = append(refs, convertImage(t, ctx, orig, lb.Registry.Ref(fmt.Sprintf("lazypull/files%d:esgz", i))))
	}
	return refs
}

// walkLayers looks up every file of every layer lazypulld has mounted.
func walkLayers(t *testing.T, lb *lazyBed) {
	t.Helper()
	ms, err := testbed.LazyMounts(lb.Lazypulld.Root)
	if err != nil {
		t.Fatal(err)
	}
	for _, mi := range ms {
		n := 0
		err := filepath.WalkDir(mi.Mountpoint, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			_, err = d.Info()
			n++
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if n < layerMemFiles {
			t.Fatalf("%s (%s): %d entries, want at least %d", mi.Mountpoint, mi.Source, n, layerMemFiles)
		}
	}
}
