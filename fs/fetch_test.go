package fs

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

// TestMountCost checks that mounting a layer whose TOC fits in the tail costs
// one Open and no other read, and one more read when it does not fit.
func TestMountCost(t *testing.T) {
	l := fullLayer(t)
	for _, tc := range []struct {
		name  string
		tail  int64
		reads int
	}{
		{"TOC in tail", DefaultTailSize, 0},
		{"TOC before tail", 128, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := newOpener(l)
			f := newFS(t, o, WithTailSize(tc.tail))
			mp := mountLayer(t, f, l)
			if _, err := os.ReadDir(filepath.Join(mp, "a")); err != nil {
				t.Fatal(err)
			}
			opens, reads, _ := o.counts()
			if opens != 1 || reads != tc.reads {
				t.Errorf("mount cost %d opens and %d reads, want 1 and %d", opens, reads, tc.reads)
			}
		})
	}
}

// TestReadFetchesOnlyItsChunks checks that, without read-ahead, reading a
// small file fetches its chunk and nothing else, and a range of a big file
// only the chunks under it.
func TestReadFetchesOnlyItsChunks(t *testing.T) {
	l := fullLayer(t)
	o := newOpener(l)
	f := newFS(t, o, WithReadahead(0), WithDirPrefetch(0))
	mp := mountLayer(t, f, l)

	checkContent(t, filepath.Join(mp, "a/text"), []byte("hello, lazy world\n"))
	start, end := l.span(t, "a/text")
	if _, reads, fetched := o.counts(); reads != 1 || fetched != end-start {
		t.Errorf("reading a/text fetched %d bytes in %d reads, want %d in 1", fetched, reads, end-start)
	}

	big := l.entries[7].data
	fh, err := os.Open(filepath.Join(mp, "big"))
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	p := make([]byte, 1000)
	off := int64(5*testChunkSize + 100)
	if _, err := fh.ReadAt(p, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, big[off:off+int64(len(p))]) {
		t.Fatal("big: wrong content")
	}
	_, _, fetched := o.counts()
	fetched -= end - start
	// The kernel reads ahead, but never the whole file.
	if fetched == 0 || fetched > int64(len(big))/4 {
		t.Errorf("reading 1000 bytes of big fetched %d bytes", fetched)
	}
}

// TestCoalescedRead checks that a read over adjacent chunks fetches them in
// one blob read of exactly their compressed bytes.
func TestCoalescedRead(t *testing.T) {
	l := fullLayer(t)
	o := newOpener(l)
	f := newFS(t, o, WithMemoryCacheSize(0), WithReadahead(0), WithDirPrefetch(0))
	v := layerAt(t, f, mountLayer(t, f, l))

	p := make([]byte, 3*testChunkSize)
	off := int64(2 * testChunkSize)
	n, err := v.ReadAt(context.Background(), "big", p, off)
	if err != nil || n != len(p) {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	if !bytes.Equal(p, l.entries[7].data[off:off+int64(len(p))]) {
		t.Fatal("wrong content")
	}
	cs, _ := v.Chunks("big", off, off+int64(len(p)))
	want := compressedSpan(cs)
	if _, reads, fetched := o.counts(); len(cs) != 3 || reads != 1 || fetched != want {
		t.Errorf("%d chunks fetched in %d reads, %d bytes; want 3 in 1, %d bytes", len(cs), reads, fetched, want)
	}
}

// compressedSpan is how many bytes of the blob cs (in blob order) span.
func compressedSpan(cs []Chunk) int64 { return cs[len(cs)-1].c.end - cs[0].c.start }

// TestConcurrentReaders checks that readers of overlapping ranges that run
// at once fetch each chunk once.
func TestConcurrentReaders(t *testing.T) {
	l := fullLayer(t)
	o := newOpener(l)
	// A memory cache: a reader that looked before a fetch ended and claims
	// the chunk after finds it there, as the FUSE reads of a container do.
	f := newFS(t, o, WithReadahead(0), WithDirPrefetch(0), WithBackgroundFetch(false))
	v := layerAt(t, f, mountLayer(t, f, l))
	big := l.entries[7].data

	gate := make(chan struct{})
	o.mu.Lock()
	o.gate = gate
	o.mu.Unlock()
	misses := f.Metrics().ChunkMisses
	const readers = 8
	var wg sync.WaitGroup
	for i := range readers {
		wg.Go(func() {
			off := int64(i%3) * testChunkSize
			p := make([]byte, 2*testChunkSize)
			if _, err := v.ReadAt(context.Background(), "big", p, off); err != nil || !bytes.Equal(p, big[off:off+int64(len(p))]) {
				t.Errorf("reader %d: %v or wrong content", i, err)
			}
		})
	}
	// Every reader has looked for its two chunks, and missed: no fetch can
	// end before the gate opens. One that fetched whatever it missed would
	// fetch chunks the others fetch too.
	waitFor(t, "every reader to look for its chunks", func() bool { return f.Metrics().ChunkMisses-misses == 2*readers })
	close(gate)
	wg.Wait()
	cs, _ := v.Chunks("big", 0, 4*testChunkSize)
	if _, _, fetched := o.counts(); len(cs) != 4 || fetched != compressedSpan(cs) {
		t.Errorf("fetched %d bytes for %d chunks of %d bytes", fetched, len(cs), compressedSpan(cs))
	}
}

// TestReaderServedBeforeLongReadEnds checks that a reader of the first
// chunks of a long read (a prefetch of a whole file) gets them once their
// bytes are in, not when the last byte of the read is; and that when the
// read then fails, the chunks it did not bring fail with its error and
// the next read fetches them.
func TestReaderServedBeforeLongReadEnds(t *testing.T) {
	l := fullLayer(t)
	o := newOpener(l)
	f := newFS(t, o, WithMemoryCacheSize(0), WithReadahead(0), WithDirPrefetch(0), WithBackgroundFetch(false), WithCache(newMapCache()))
	v := layerAt(t, f, mountLayer(t, f, l))
	ctx := context.Background()
	big := l.entries[7].data
	cs, err := v.Chunks("big", 0, int64(len(big)))
	if err != nil || len(cs) < 4 {
		t.Fatalf("big has %d chunks (%v), want at least 4", len(cs), err)
	}
	hold, held := make(chan struct{}), make(chan struct{})
	o.mu.Lock()
	o.hold, o.holdFrom, o.holdErr, o.held = hold, cs[2].c.start, errors.New("connection reset"), held
	o.mu.Unlock()

	prefetched := make(chan struct{})
	go func() {
		defer close(prefetched)
		in := make([]chunk, len(cs))
		for i, c := range cs {
			in[i] = c.c
		}
		v.fetchNow(ctx, in, Later)
	}()
	select {
	case <-held: // every chunk claimed, the first two arrived
	case <-time.After(30 * time.Second):
		t.Fatal("the prefetch's read did not start")
	}
	got := make(chan error, 1)
	go func() {
		p := make([]byte, 2*testChunkSize)
		_, err := v.ReadAt(ctx, "big", p, 0)
		if err == nil && !bytes.Equal(p, big[:len(p)]) {
			err = errors.New("wrong content")
		}
		got <- err
	}()
	select {
	case err := <-got:
		if err != nil {
			t.Errorf("reading the first two chunks: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("the reader of the first two chunks waited for the rest of the read")
	}
	reads0 := reads(o)
	close(hold)
	<-prefetched
	for _, c := range cs[:2] {
		if !v.Cached(ctx, c) {
			t.Errorf("chunk at %d, which arrived, is not in the cache", c.Offset)
		}
	}
	for _, c := range cs[2:] {
		if v.Cached(ctx, c) {
			t.Errorf("chunk at %d, which the failed read did not bring, is in the cache", c.Offset)
		}
	}
	o.mu.Lock()
	o.hold = nil
	o.mu.Unlock()
	p := make([]byte, testChunkSize)
	if _, err := v.ReadAt(ctx, "big", p, 2*testChunkSize); err != nil || !bytes.Equal(p, big[2*testChunkSize:3*testChunkSize]) {
		t.Errorf("reading the third chunk after the failed read: %v or wrong content", err)
	}
	if n := reads(o); n != reads0+1 {
		t.Errorf("reading the third chunk again cost %d fetches, want 1", n-reads0)
	}
}

// TestCorruptChunk checks that a chunk whose bytes do not match its digest
// is an EIO for its file only.
func TestCorruptChunk(t *testing.T) {
	l := fullLayer(t)
	start, _ := l.span(t, "a/small")
	bad := *l
	bad.blob = bytes.Clone(l.blob)
	bad.blob[start+200] ^= 0x40
	o := newOpener(&bad)
	o.blobs[l.dgst] = bad.blob // the digest is the label's; the registry serves other bytes
	f := newFS(t, o)
	mp := mountLayer(t, f, l)

	_, err := os.ReadFile(filepath.Join(mp, "a/small"))
	if !errors.Is(err, syscall.EIO) {
		t.Errorf("reading the corrupt file: %v, want EIO", err)
	}
	checkContent(t, filepath.Join(mp, "a/text"), []byte("hello, lazy world\n"))
	checkContent(t, filepath.Join(mp, "big"), l.entries[7].data)
	if _, err := os.ReadFile(filepath.Join(mp, "a/hard")); !errors.Is(err, syscall.EIO) {
		t.Errorf("reading the corrupt file again: %v, want EIO", err)
	}
}

// TestTOCVerification checks that a TOC digest label that does not match
// fails Mount and mounts nothing, and that a layer without one is mounted
// only when unverified layers are allowed.
func TestTOCVerification(t *testing.T) {
	l := fullLayer(t)
	ctx := context.Background()
	f := newFS(t, newOpener(l))
	mp := mountpoint(t)

	wrong := l.labels()
	wrong[LabelTOCDigest] = l.dgst.String()
	if err := f.Mount(ctx, mp, wrong); !errdefs.IsDataLoss(err) {
		t.Errorf("Mount with a wrong TOC digest: %v, want DataLoss", err)
	}
	none := l.labels()
	delete(none, LabelTOCDigest)
	if err := f.Mount(ctx, mp, none); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Mount without a TOC digest: %v, want FailedPrecondition", err)
	}
	if isMounted(t, mp) {
		t.Fatal("mounted after failed Mounts")
	}
	if err := f.Mount(ctx, mp, l.labels()); err != nil {
		t.Errorf("Mount after failures: %v", err)
	}

	lax := newFS(t, newOpener(l), WithAllowUnverified(true))
	mp2 := mountpoint(t)
	if err := lax.Mount(ctx, mp2, none); err != nil {
		t.Fatalf("unverified Mount: %v", err)
	}
	checkContent(t, filepath.Join(mp2, "a/small"), l.entries[1].data)
}

// TestNotEstargz checks that a plain gzip layer is refused with a reason,
// and that a registry error keeps its class.
func TestNotEstargz(t *testing.T) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(tarBytes(t, []tarEntry{file("a", 0o644, []byte("a"))}))
	zw.Close()
	l := &testLayer{blob: gz.Bytes(), dgst: digest.FromBytes(gz.Bytes()), toc: digest.FromString("toc")}
	f := newFS(t, newOpener(l))
	mp := mountpoint(t)
	err := f.Mount(context.Background(), mp, l.labels())
	if !errdefs.IsNotImplemented(err) || !bytes.Contains([]byte(err.Error()), []byte("not an eStargz blob")) {
		t.Errorf("Mount of a plain tar: %v", err)
	}
	o := newOpener()
	o.failOn[l.dgst] = errdefs.ErrUnavailable
	f = newFS(t, o)
	if err := f.Mount(context.Background(), mp, l.labels()); !errdefs.IsUnavailable(err) {
		t.Errorf("Mount with a failing registry: %v, want Unavailable", err)
	}
}

// TestCacheRemount checks that content read once is served from the Cache
// after a remount by another FileSystem, with no fetch, and that a corrupt
// cache entry is not served.
func TestCacheRemount(t *testing.T) {
	l := fullLayer(t)
	c := newMapCache()
	f := newFS(t, newOpener(l), WithCache(c), WithBackgroundFetch(false))
	mp := mountLayer(t, f, l)
	checkContent(t, filepath.Join(mp, "big"), l.entries[7].data)
	checkContent(t, filepath.Join(mp, "a/small"), l.entries[1].data)
	if err := f.Unmount(context.Background(), mp); err != nil {
		t.Fatal(err)
	}

	o := newOpener(l)
	f = newFS(t, o, WithCache(c), WithBackgroundFetch(false))
	mp = mountLayer(t, f, l)
	checkContent(t, filepath.Join(mp, "big"), l.entries[7].data)
	checkContent(t, filepath.Join(mp, "a/small"), l.entries[1].data)
	c.mu.Lock()
	hits := c.hits
	c.mu.Unlock()
	if _, reads, _ := o.counts(); reads != 0 || hits == 0 {
		t.Errorf("remount: %d reads, %d cache hits; want no read", reads, hits)
	}

	c.mu.Lock()
	for k, v := range c.m {
		if len(v) == len("hello, lazy world\n") {
			c.m[k] = []byte("hello, evil world\n")
		}
	}
	c.mu.Unlock()
	f = newFS(t, newOpener(l), WithCache(c))
	mp = mountLayer(t, f, l)
	checkContent(t, filepath.Join(mp, "a/text"), []byte("hello, lazy world\n"))
}

// TestRestartReusesCacheForPrefetch checks that after a restart over a
// warm chunk cache, the fetches lazypull starts by itself (here the
// directory prefetch of a read that missed) find the chunks in the cache
// instead of fetching them again.
func TestRestartReusesCacheForPrefetch(t *testing.T) {
	es := libEntries(20)
	l := buildLayer(t, es)
	c := newDirCache(t)
	f := newFS(t, newOpener(l), WithCache(c), WithBackgroundFetch(false), WithReadahead(0), WithDirPrefetch(0))
	mp := mountLayer(t, f, l)
	for i, e := range es[1:] {
		if i != 5 {
			checkContent(t, filepath.Join(mp, e.hdr.Name), e.data)
		}
	}

	o := newOpener(l)
	f = newFS(t, o, WithCache(c), WithBackgroundFetch(false), WithReadahead(0), WithDirPrefetch(1<<20))
	mp = mountLayer(t, f, l)
	checkContent(t, filepath.Join(mp, es[6].hdr.Name), es[6].data)
	waitFetches(t, f)
	if n := reads(o); n != 1 {
		t.Errorf("after a restart, a read that missed and the prefetch of its directory, cached but for it, cost %d fetches, want 1", n)
	}
}

// TestImageResolution checks that mounting one layer of an image resolves
// the image's other layers in the background, once each, so that their
// Mounts cost nothing more.
func TestImageResolution(t *testing.T) {
	var layers []*testLayer
	var list []string
	for i := range 3 {
		l := buildLayer(t, []tarEntry{file("f", 0o644, randomBytes(int64(10+i), 1000))})
		layers = append(layers, l)
		list = append(list, l.dgst.String())
	}
	o := newOpener(layers...)
	f := newFS(t, o)
	ctx := context.Background()
	labels := func(l *testLayer) map[string]string {
		m := l.labels()
		m[LabelImageLayers] = list[0] + "," + list[1] + "," + list[2]
		return m
	}
	if err := f.Mount(ctx, mountpoint(t), labels(layers[0])); err != nil {
		t.Fatal(err)
	}
	// Mounting layer 1 at once joins its background resolution.
	if err := f.Mount(ctx, mountpoint(t), labels(layers[1])); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "layer 2's background resolution", func() bool { return o.opensOf(layers[2].dgst) != 0 })
	waitIdle(t, f)
	mp := mountpoint(t)
	if err := f.Mount(ctx, mp, labels(layers[2])); err != nil {
		t.Fatal(err)
	}
	checkContent(t, filepath.Join(mp, "f"), layers[2].entries[0].data)
	for i, l := range layers {
		if n := o.opensOf(l.dgst); n != 1 {
			t.Errorf("layer %d opened %d times, want 1", i, n)
		}
	}
}

// TestCloseStopsResolution checks that Close cancels background resolution.
func TestCloseStopsResolution(t *testing.T) {
	a := buildLayer(t, []tarEntry{file("a", 0o644, []byte("a"))})
	b := buildLayer(t, []tarEntry{file("b", 0o644, []byte("b"))})
	o := newOpener(a, b)
	o.stuck[b.dgst] = true
	f, err := New(t.TempDir(), o)
	if err != nil {
		t.Fatal(err)
	}
	labels := a.labels()
	labels[LabelImageLayers] = a.dgst.String() + "," + b.dgst.String()
	mp := mountpoint(t)
	t.Cleanup(func() {
		if isMounted(t, mp) {
			unmountDetach(t, mp)
		}
	})
	if err := f.Mount(context.Background(), mp, labels); err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- f.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not stop background resolution")
	}
	if isMounted(t, mp) {
		t.Error("mounted after Close")
	}
}

// TestUnverifiedChecksChunks checks that a layer mounted without a TOC
// digest still has its chunks checked against the digests in its TOC.
func TestUnverifiedChecksChunks(t *testing.T) {
	l := buildLayer(t, []tarEntry{file("a", 0o644, []byte("a"))}, estargz.WithChunkSize(testChunkSize))
	f := newFS(t, newOpener(l), WithAllowUnverified(true))
	labels := l.labels()
	delete(labels, LabelTOCDigest)
	mp := mountpoint(t)
	if err := f.Mount(context.Background(), mp, labels); err != nil {
		t.Fatal(err)
	}
	if l := layerAt(t, f, mp).l; l.verifier == nil || l.verified {
		t.Error("unverified layer: want chunk verification without TOC verification")
	}
}
