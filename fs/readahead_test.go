package fs

import (
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

// TestReadaheadFetchesNeighbours checks that a reader of a directory of
// small files in blob order, once it has read two in a row, gets the files
// after them brought along, verified and cached, so that reading them costs
// no fetch.
func TestReadaheadFetchesNeighbours(t *testing.T) {
	l := buildLayer(t, libEntries(40))
	o := newOpener(l)
	c := newMapCache()
	f := newFS(t, o, WithCache(c), WithBackgroundFetch(false), WithMemoryCacheSize(0))
	mp := mountLayer(t, f, l)

	checkContent(t, filepath.Join(mp, "lib/m000.py"), l.entries[1].data)
	checkContent(t, filepath.Join(mp, "lib/m001.py"), l.entries[2].data)
	waitFetches(t, f)
	before := reads(o)
	for _, e := range l.entries[3:] {
		checkContent(t, filepath.Join(mp, e.hdr.Name), e.data)
	}
	if n := reads(o) - before; n != 0 {
		t.Errorf("reading the neighbours of the first file cost %d fetches, want 0", n)
	}
	c.mu.Lock()
	entries := len(c.m)
	c.mu.Unlock()
	if entries != 40 {
		t.Errorf("cache holds %d chunks, want the 40 files", entries)
	}
	if before > 2+DefaultFetchConcurrency {
		t.Errorf("the first two reads and the window cost %d fetches", before)
	}
}

// TestReadaheadNotForJumps checks that a reader jumping around the blob, as
// a starting program opening its libraries and modules does, gets no
// window: each read fetches its own chunks and nothing more.
func TestReadaheadNotForJumps(t *testing.T) {
	l := buildLayer(t, libEntries(40))
	o := newOpener(l)
	f := newFS(t, o, WithCache(newMapCache()), WithBackgroundFetch(false), WithMemoryCacheSize(0))
	mp := mountLayer(t, f, l)
	var want int64
	for _, i := range []int{30, 5, 17, 2} {
		e := l.entries[1+i]
		checkContent(t, filepath.Join(mp, e.hdr.Name), e.data)
		start, end := l.span(t, e.hdr.Name)
		want += end - start
	}
	waitFetches(t, f)
	if _, n, fetched := o.counts(); n != 4 || fetched != want {
		t.Errorf("4 reads far apart cost %d fetches of %d bytes, want 4 of %d", n, fetched, want)
	}
}

// TestReadaheadOff checks that without read-ahead each file costs a fetch,
// the baseline the read-ahead is measured against.
func TestReadaheadOff(t *testing.T) {
	l := buildLayer(t, libEntries(10))
	o := newOpener(l)
	f := newFS(t, o, WithReadahead(0), WithDirPrefetch(0), WithBackgroundFetch(false))
	mp := mountLayer(t, f, l)
	for _, e := range l.entries[1:] {
		checkContent(t, filepath.Join(mp, e.hdr.Name), e.data)
	}
	if n := reads(o); n != 10 {
		t.Errorf("10 files cost %d fetches, want 10", n)
	}
}

// TestReadaheadCorruptNeighbour checks that a chunk of a window that does
// not match its digest is neither served nor cached, and does not fail the
// read that fetched the window nor the other chunks of the window.
func TestReadaheadCorruptNeighbour(t *testing.T) {
	l := buildLayer(t, libEntries(10))
	start, _ := l.span(t, "lib/m003.py")
	bad := bytes.Clone(l.blob)
	bad[start+100] ^= 0x40
	o := newOpener(l)
	o.blobs[l.dgst] = bad
	c := newMapCache()
	f := newFS(t, o, WithCache(c), WithBackgroundFetch(false), WithMemoryCacheSize(0))
	mp := mountLayer(t, f, l)

	checkContent(t, filepath.Join(mp, "lib/m000.py"), l.entries[1].data)
	checkContent(t, filepath.Join(mp, "lib/m001.py"), l.entries[2].data)
	waitFetches(t, f)
	before := reads(o)
	for _, e := range append(l.entries[3:4:4], l.entries[5:]...) {
		checkContent(t, filepath.Join(mp, e.hdr.Name), e.data)
	}
	if n := reads(o) - before; n != 0 {
		t.Errorf("reading the good neighbours cost %d fetches, want 0", n)
	}
	if _, err := os.ReadFile(filepath.Join(mp, "lib/m003.py")); !errors.Is(err, syscall.EIO) {
		t.Errorf("reading the corrupt neighbour: %v, want EIO", err)
	}
	c.mu.Lock()
	_, cached := c.m[digest.FromBytes(l.entries[4].data)]
	c.mu.Unlock()
	if cached {
		t.Error("the corrupt chunk was cached")
	}
}

// TestReadaheadSequentialGrows checks that reading a big file sequentially
// costs far fewer fetches than it has chunks, and that a reader that keeps
// up never waits for a fetch it could have started earlier.
func TestReadaheadSequentialGrows(t *testing.T) {
	l := fullLayer(t)
	o := newOpener(l)
	f := newFS(t, o, WithReadahead(256<<10), WithFetchConcurrency(1), WithDirPrefetch(0), WithBackgroundFetch(false))
	mp := mountLayer(t, f, l)
	checkContent(t, filepath.Join(mp, "big"), l.entries[7].data)
	// 40 chunks of 256 KiB; windows grow 256K, 512K, 1M, 2M, 2M... : 8
	// fetches, or a few more when the kernel's own read-ahead reads
	// overtake a window that is still being claimed.
	t.Logf("%d fetches", reads(o))
	if n := reads(o); n > 12 {
		t.Errorf("reading 40 chunks cost %d fetches", n)
	}
}

// TestReadaheadSkipsLargeChunk checks that a window takes only chunks that
// fit in it: reading a small file must not pull in the next file's large
// chunk, which is most of a layer's bytes in a typical image.
func TestReadaheadSkipsLargeChunk(t *testing.T) {
	l := buildLayer(t, []tarEntry{
		file("small", 0o644, []byte("a small file read at start-up")),
		file("big", 0o644, randomBytes(11, 2<<20)),
		file("after", 0o644, []byte("after the big file")),
	}, estargz.WithChunkSize(1<<20), estargz.WithCompressionLevel(gzip.BestSpeed))
	o := newOpener(l)
	f := newFS(t, o, WithCache(newMapCache()), WithBackgroundFetch(false), WithReadahead(256<<10))
	mp := mountLayer(t, f, l)
	checkContent(t, filepath.Join(mp, "small"), []byte("a small file read at start-up"))
	waitFetches(t, f)
	if _, _, fetched := o.counts(); fetched >= 1<<20 {
		t.Errorf("reading a small file fetched %d bytes: the window took the next file's 1 MiB chunk", fetched)
	}
	// Reading on in the big file still reads ahead its next chunk.
	data := randomBytes(11, 2<<20)
	checkContent(t, filepath.Join(mp, "big"), data)
}

// TestRandomReaderGetsWholeFile checks that a reader jumping around a file
// (a program paging in a file it mapped) has, from its second jump on, the
// rest of the file fetched at once, so that its later reads cost no fetch.
func TestRandomReaderGetsWholeFile(t *testing.T) {
	const chunk, n = 256 << 10, 8
	data := randomBytes(7, n*chunk)
	l := buildLayer(t, []tarEntry{file("archive", 0o644, data), file("other", 0o644, randomBytes(8, chunk))}, estargz.WithChunkSize(chunk))
	o := newOpener(l)
	f := newFS(t, o, WithCache(newMapCache()), WithBackgroundFetch(false), WithDirPrefetch(0))
	mp := mountLayer(t, f, l)
	fh, err := os.Open(filepath.Join(mp, "archive"))
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	buf := make([]byte, 4096)
	read := func(i int) {
		t.Helper()
		if _, err := fh.ReadAt(buf, int64(i)*chunk); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, data[i*chunk:i*chunk+len(buf)]) {
			t.Fatalf("chunk %d: wrong content", i)
		}
	}
	read(5)
	read(2)
	waitFetches(t, f)
	before := reads(o)
	for _, i := range []int{7, 0, 3, 6, 1, 4} {
		read(i)
	}
	if n := reads(o) - before; n != 0 {
		t.Errorf("after two jumps, reading the rest of the file cost %d fetches, want 0", n)
	}
	if _, err := os.ReadFile(filepath.Join(mp, "other")); err != nil {
		t.Fatal(err)
	}
	if reads(o) == before {
		t.Error("the other file was fetched along")
	}
}

// TestOpenedFileFetchedWhole checks that a file of a few chunks, read first
// at its start, is fetched whole at once (a program mapping a class
// archive or a library reads on, in an order of its own), and that a file
// over the bound is not.
func TestOpenedFileFetchedWhole(t *testing.T) {
	const chunk = 1 << 20
	small := randomBytes(11, 6*chunk)
	large := randomBytes(12, 10*chunk) // incompressible: 10 MiB compressed
	lib, prog := randomBytes(13, 10*chunk), randomBytes(14, 10*chunk)
	l := buildLayer(t, []tarEntry{
		file("small", 0o644, small), file("large", 0o644, large),
		file("liblarge.so.1", 0o644, lib), file("program", 0o755, prog),
	}, estargz.WithChunkSize(chunk))
	o := newOpener(l)
	f := newFS(t, o, WithCache(newMapCache()), WithBackgroundFetch(false), WithDirPrefetch(0))
	mp := mountLayer(t, f, l)
	for _, tc := range []struct {
		name  string
		data  []byte
		whole bool
	}{{"small", small, true}, {"large", large, false}, {"liblarge.so.1", lib, true}, {"program", prog, true}} {
		fh, err := os.Open(filepath.Join(mp, tc.name))
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4096)
		if _, err := fh.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, tc.data[:len(buf)]) {
			t.Fatalf("%s: %v or wrong content", tc.name, err)
		}
		waitFetches(t, f)
		before := reads(o)
		off := int64(len(tc.data) - 2*chunk)
		if _, err := fh.ReadAt(buf, off); err != nil || !bytes.Equal(buf, tc.data[off:off+int64(len(buf))]) {
			t.Fatalf("%s: %v or wrong content", tc.name, err)
		}
		fh.Close()
		if fetched := reads(o) > before; fetched == tc.whole {
			t.Errorf("%s: a read far from the start fetched: %v; want the file fetched whole: %v", tc.name, fetched, tc.whole)
		}
	}
}
