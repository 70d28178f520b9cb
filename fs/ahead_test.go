package fs

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/hanwen/go-fuse/v2/fuse"
	digest "github.com/opencontainers/go-digest"
)

func reads(o *testOpener) int {
	_, n, _ := o.counts()
	return n
}

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

// TestPrefetchAtMount checks that the files before the prefetch landmark
// are fetched from the moment of Mount, which may wait for them, and that
// reading them then costs nothing.
func TestPrefetchAtMount(t *testing.T) {
	es := libEntries(20)
	var prio []string
	for _, e := range es[10:] {
		prio = append(prio, e.hdr.Name)
	}
	l := buildLayer(t, es, estargz.WithPrioritizedFiles(prio))
	o := newOpener(l)
	f := newFS(t, o, WithReadahead(0), WithDirPrefetch(0), WithBackgroundFetch(false), WithPrefetchWait(10*time.Second), WithMemoryCacheSize(0), WithCache(newMapCache()))
	mp := mountLayer(t, f, l)
	_, n, fetched := o.counts()
	lmStart, _ := l.span(t, estargz.PrefetchLandmark)
	first, _ := l.span(t, prio[0])
	if n == 0 || fetched < lmStart-first || fetched > lmStart {
		t.Errorf("prefetch fetched %d bytes in %d reads; the prioritized files span %d", fetched, n, lmStart-first)
	}
	for _, e := range es[10:] {
		checkContent(t, filepath.Join(mp, e.hdr.Name), e.data)
	}
	if m := reads(o); m != n {
		t.Errorf("reading the prefetched files cost %d fetches", m-n)
	}
	checkContent(t, filepath.Join(mp, es[1].hdr.Name), es[1].data)
	if m := reads(o); m != n+1 {
		t.Errorf("reading a file not prefetched cost %d fetches, want 1", m-n)
	}
}

// TestPrefetchLargeFileHead checks that of a prioritized file larger than
// 16 MiB compressed, the prefetch at mount fetches only the first chunk:
// a start-up that opens so large a file reads parts of it.
func TestPrefetchLargeFileHead(t *testing.T) {
	const chunk = 4 << 20
	small, large := randomBytes(31, 100<<10), randomBytes(32, 5*chunk) // incompressible: 20 MiB
	l := buildLayer(t, []tarEntry{file("small", 0o644, small), file("large", 0o644, large), file("other", 0o644, randomBytes(33, 1000))},
		estargz.WithPrioritizedFiles([]string{"small", "large"}), estargz.WithChunkSize(chunk))
	o := newOpener(l)
	f := newFS(t, o, WithReadahead(0), WithDirPrefetch(0), WithBackgroundFetch(false), WithPrefetchWait(10*time.Second), WithCache(newMapCache()))
	mp := mountLayer(t, f, l)
	if _, _, fetched := o.counts(); fetched < int64(len(small)+chunk) || fetched > int64(len(small)+chunk+64<<10) {
		t.Errorf("prefetch fetched %d bytes, want the small file (%d) and the first chunk of the large one (%d)", fetched, len(small), chunk)
	}
	fh, err := os.Open(filepath.Join(mp, "large"))
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	buf := make([]byte, 4096)
	for _, tc := range []struct {
		off     int64
		fetches bool
	}{{0, false}, {4 * chunk, true}} {
		before := reads(o)
		if _, err := fh.ReadAt(buf, tc.off); err != nil || !bytes.Equal(buf, large[tc.off:tc.off+4096]) {
			t.Fatalf("read at %d: %v or wrong content", tc.off, err)
		}
		if fetched := reads(o) > before; fetched != tc.fetches {
			t.Errorf("read at %d fetched: %v, want %v", tc.off, fetched, tc.fetches)
		}
	}
}

// TestBackgroundFetch checks that background fetch makes a layer fully
// local, says when, and that reads then cost no fetch.
func TestBackgroundFetch(t *testing.T) {
	l := fullLayer(t)
	o := newOpener(l)
	c := newMapCache()
	f := newFS(t, o, WithCache(c), WithBackgroundFetchDelay(0), WithMemoryCacheSize(0))
	mp := mountLayer(t, f, l)
	st := waitFullyLocal(t, f)
	if st.LocalBytes != st.TotalBytes || st.LocalChunks != st.Chunks || st.Chunks < 40 {
		t.Errorf("stats %+v: want every chunk local", st)
	}
	before := reads(o)
	if before > st.Chunks/2 {
		t.Errorf("background fetch of %d chunks cost %d fetches", st.Chunks, before)
	}
	for _, e := range l.entries {
		if e.hdr.Typeflag == '0' && !strings.Contains(e.hdr.Name, ".wh.") {
			checkContent(t, filepath.Join(mp, e.hdr.Name), e.data)
		}
	}
	if n := reads(o) - before; n != 0 {
		t.Errorf("reads of a fully local layer cost %d fetches", n)
	}
}

func waitFullyLocal(t *testing.T, f *FileSystem) LayerStats {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := f.Stats()
		if len(st) != 1 {
			t.Fatalf("stats of %d layers, want 1", len(st))
		}
		if !st[0].FullyLocal.IsZero() {
			return st[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("layer not fully local: %+v", st[0])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestBackgroundFetchStopsOnUnmount checks that Unmount stops a background
// fetch that is waiting for the registry, and that nothing is fetched after.
func TestBackgroundFetchStopsOnUnmount(t *testing.T) {
	l := fullLayer(t)
	o := newOpener(l)
	o.gate = make(chan struct{}) // never opens: every fetch hangs
	f := newFS(t, o, WithCache(newMapCache()), WithBackgroundFetchDelay(0), WithBackgroundFetchConcurrency(2))
	mp := mountLayer(t, f, l)
	deadline := time.Now().Add(10 * time.Second)
	for reads(o) < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := reads(o); n != 2 {
		t.Fatalf("%d background fetches under way, want 2", n)
	}
	done := make(chan error)
	go func() { done <- f.Unmount(context.Background(), mp) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Unmount did not stop the background fetch")
	}
	// Unmount waited for the layer's goroutines: nothing fetches any more.
	if n := reads(o); n != 2 {
		t.Errorf("%d fetches after Unmount, want none", n-2)
	}
}

// TestOnDemandNotStarved checks that background fetch yields to reads:
// while a reader reads file after file over a slow link, the background
// fetch starts (almost) no new request, so each read waits at most for the
// background requests already on the link, not for the background fetch.
// Requests are counted rather than timed, so a busy machine cannot make the
// test pass or fail.
func TestOnDemandNotStarved(t *testing.T) {
	var es []tarEntry
	const big = 16
	for i := range big {
		es = append(es, file(fmt.Sprintf("blob%02d", i), 0o644, randomBytes(int64(300+i), 1<<20)))
	}
	const files = 8
	for i := range files {
		es = append(es, file(fmt.Sprintf("zz%d", i), 0o644, []byte(fmt.Sprintf("file %d that a reader wants", i))))
	}
	l := buildLayer(t, es, estargz.WithChunkSize(1<<20), estargz.WithCompressionLevel(gzip.BestSpeed))
	o := newOpener(l)
	o.link = &netLink{rtt: 20 * time.Millisecond, rate: 8 << 20} // the layer takes 2 s
	f := newFS(t, o, WithCache(newMapCache()), WithBackgroundFetchDelay(0), WithReadahead(0))
	mp := mountLayer(t, f, l)
	// Let the background fetch fill the link first.
	deadline := time.Now().Add(10 * time.Second)
	for reads(o) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	before := reads(o)
	for _, e := range es[big:] {
		checkContent(t, filepath.Join(mp, e.hdr.Name), e.data)
	}
	// Each file is one chunk and read-ahead is off: files requests are the
	// reader's, the rest the background fetch's.
	background := reads(o) - before - files
	if background > DefaultBackgroundConcurrency {
		t.Errorf("the background fetch started %d requests while %d files were read one after another, want at most %d",
			background, files, DefaultBackgroundConcurrency)
	}
	if st := f.Stats()[0]; !st.FullyLocal.IsZero() {
		t.Errorf("background fetch done before the reads (%+v): the test measured nothing", st)
	}
}

// TestPassthrough checks that a file that is one cached chunk is served by
// passthrough, with the same bytes, that the FileSystem serves it without
// passthrough when it is off or the entry is corrupt, and that opens with
// and without passthrough can overlap.
func TestPassthrough(t *testing.T) {
	l := buildLayer(t, []tarEntry{
		file("one", 0o644, randomBytes(7, 300<<10)),
		file("two", 0o644, randomBytes(8, 5000)),
	})
	c := newDirCache(t)
	warm := newFS(t, newOpener(l), WithCache(c), WithBackgroundFetch(false))
	mp := mountLayer(t, warm, l)
	if warm.mounts[mp].server.KernelSettings().Flags64()&fuse.CAP_PASSTHROUGH == 0 {
		t.Skip("kernel without FUSE passthrough")
	}
	// One open before the file is cached and one after, at once.
	fh, err := os.Open(filepath.Join(mp, "one"))
	if err != nil {
		t.Fatal(err)
	}
	checkContent(t, filepath.Join(mp, "one"), l.entries[0].data)
	checkContent(t, filepath.Join(mp, "one"), l.entries[0].data)
	fh.Close()
	checkContent(t, filepath.Join(mp, "two"), l.entries[1].data)

	for _, tc := range []struct {
		name        string
		opts        []Option
		passthrough bool
	}{
		{"on", nil, true},
		{"off", []Option{WithPassthrough(false)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := newOpener(l)
			f := newFS(t, o, append(tc.opts, WithCache(c), WithBackgroundFetch(false))...)
			mp := mountLayer(t, f, l)
			checkContent(t, filepath.Join(mp, "one"), l.entries[0].data)
			if n := f.Stats()[0].Reads; (n == 0) != tc.passthrough {
				t.Errorf("%d reads through the FileSystem; passthrough %v", n, tc.passthrough)
			}
			if n := reads(o); n != 0 {
				t.Errorf("%d fetches, want 0", n)
			}
		})
	}

	t.Run("corrupt entry", func(t *testing.T) {
		key := digest.FromBytes(l.entries[1].data)
		evil := bytes.Clone(l.entries[1].data)
		evil[10] ^= 1
		if err := c.Put(key, evil); err != nil {
			t.Fatal(err)
		}
		o := newOpener(l)
		f := newFS(t, o, WithCache(c), WithBackgroundFetch(false))
		mp := mountLayer(t, f, l)
		checkContent(t, filepath.Join(mp, "two"), l.entries[1].data)
		if f.Stats()[0].Reads == 0 || reads(o) != 1 {
			t.Errorf("corrupt entry: %d reads, %d fetches; want reads and a fetch", f.Stats()[0].Reads, reads(o))
		}
	})
}

// TestCloseLeavesNoGoroutines checks that Close stops read-ahead, prefetch
// and background fetch, even over a slow link.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	l := fullLayer(t)
	o := newOpener(l)
	o.link = &netLink{rtt: 50 * time.Millisecond, rate: 4 << 20}
	f, err := New(t.TempDir(), o, WithCache(newMapCache()), WithBackgroundFetchDelay(0))
	if err != nil {
		t.Fatal(err)
	}
	mp := mountpoint(t)
	if err := f.Mount(context.Background(), mp, l.labels()); err != nil {
		t.Fatal(err)
	}
	checkContent(t, filepath.Join(mp, "a/text"), []byte("hello, lazy world\n"))
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after Close, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
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

// TestBackgroundServesBulkReader checks that a reader that keeps the link
// busy, reading file after file in an order of its own (no read-ahead
// helps it), does not hold the background fetch off for good: after a
// while the background fetch goes on and fetches the rest of the layer in
// large requests, so the reader's later files cost no fetch of their own.
func TestBackgroundServesBulkReader(t *testing.T) {
	const n = 200
	es := libEntries(n)
	l := buildLayer(t, es)
	o := newOpener(l)
	o.link = &netLink{rtt: 20 * time.Millisecond} // n reads one by one: 4 s
	// The reader starts before the background fetch, and keeps it waiting.
	f := newFS(t, o, WithCache(newMapCache()), WithBackgroundFetchDelay(200*time.Millisecond), WithReadahead(0), WithMemoryCacheSize(0))
	mp := mountLayer(t, f, l)
	for i := n; i >= 1; i-- { // against blob order
		checkContent(t, filepath.Join(mp, es[i].hdr.Name), es[i].data)
	}
	_, reads, _ := o.counts()
	t.Logf("%d files cost %d fetches", n, reads)
	if reads >= n {
		t.Errorf("reading %d files one by one cost %d fetches: the background fetch never helped", n, reads)
	}
}

// TestDirPrefetch checks that the first read that fetches in a small
// directory brings its other files along, so that reading them in any
// order costs no fetch, and that a directory larger than the bound is left
// to its readers.
func TestDirPrefetch(t *testing.T) {
	l := buildLayer(t, libEntries(40))
	o := newOpener(l)
	f := newFS(t, o, WithCache(newMapCache()), WithBackgroundFetch(false), WithReadahead(0), WithDirPrefetch(4<<20))
	mp := mountLayer(t, f, l)
	checkContent(t, filepath.Join(mp, "lib/m030.py"), l.entries[31].data)
	waitFetches(t, f)
	before := reads(o)
	for _, i := range []int{5, 17, 2, 39, 0} {
		checkContent(t, filepath.Join(mp, l.entries[1+i].hdr.Name), l.entries[1+i].data)
	}
	if n := reads(o) - before; n != 0 {
		t.Errorf("reading 5 more files of the directory cost %d fetches, want 0", n)
	}

	small := buildLayer(t, libEntries(40))
	o = newOpener(small)
	f = newFS(t, o, WithCache(newMapCache()), WithBackgroundFetch(false), WithReadahead(0), WithDirPrefetch(64<<10))
	mp = mountLayer(t, f, small)
	checkContent(t, filepath.Join(mp, "lib/m030.py"), small.entries[31].data)
	waitFetches(t, f)
	start, end := small.span(t, "lib/m030.py")
	if _, n, fetched := o.counts(); n != 1 || fetched != end-start {
		t.Errorf("a read in a directory over the bound cost %d fetches of %d bytes, want 1 of %d", n, fetched, end-start)
	}
}

// TestBackgroundWaitsForStartingProgram checks that a program that reads a
// large file in pieces of its own order, with no pause, for longer than a
// moment (a JVM paging in its libraries and class archive) has the link to
// itself: the background fetch, whose requests would queue ahead of its
// reads, waits until it pauses, however long it keeps reading.
func TestBackgroundWaitsForStartingProgram(t *testing.T) {
	const chunk, n = 256 << 10, 24
	big := randomBytes(5, n*chunk)
	l := buildLayer(t, append(libEntries(60), file("big", 0o644, big)), estargz.WithChunkSize(chunk))
	o := newOpener(l)
	o.link = &netLink{rtt: 100 * time.Millisecond} // n reads one by one: 2.4 s
	f := newFS(t, o, WithCache(newMapCache()), WithBackgroundFetchDelay(0), WithReadahead(0), WithMemoryCacheSize(0))
	mp := mountLayer(t, f, l)
	fh, err := os.Open(filepath.Join(mp, "big"))
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	buf := make([]byte, 4096)
	for _, i := range rand.New(rand.NewSource(1)).Perm(n) {
		if _, err := fh.ReadAt(buf, int64(i)*chunk); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, big[i*chunk:i*chunk+len(buf)]) {
			t.Fatalf("chunk %d: wrong content", i)
		}
	}
	start, end := l.span(t, "big")
	if _, _, fetched := o.counts(); fetched > end-start {
		t.Errorf("while the program read, %d bytes were fetched; the file is %d: the background fetch competed with it", fetched, end-start)
	}
	// Once the program pauses, the background fetch brings the rest.
	waitFullyLocal(t, f)
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

// TestDemandBulk checks when readers count as reading in bulk, which lets
// the background fetch go on while they keep the link busy: after missing
// in backgroundBulkBurst files within backgroundBulkWithin, or in
// backgroundBulkFiles files however slowly, with no pause; and not before.
func TestDemandBulk(t *testing.T) {
	// While readers are busy, waitQuiet returns only in bulk.
	bulk := func(d *demand) bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		defer cancel()
		return d.waitQuiet(ctx, backgroundQuiet) == nil
	}
	clk := newFakeClock()
	fast := newDemand(clk)
	fast.begin("") // busy
	for i := range backgroundBulkBurst {
		if bulk(fast) {
			t.Fatalf("in bulk after %d files", i)
		}
		fast.begin(fmt.Sprintf("f%d", i))
		fast.begin(fmt.Sprintf("f%d", i)) // the same file again counts once
	}
	if !bulk(fast) {
		t.Errorf("not in bulk after %d files at once", backgroundBulkBurst)
	}

	slow := newDemand(clk)
	slow.begin("")
	step := backgroundBulkWithin / (backgroundBulkBurst - 2)
	for i := range backgroundBulkFiles {
		if bulk(slow) {
			t.Fatalf("in bulk after %d files, one every %v", i, step)
		}
		slow.begin(fmt.Sprintf("f%d", i))
		clk.advance(step)
	}
	if !bulk(slow) {
		t.Errorf("not in bulk after %d files", backgroundBulkFiles)
	}
	// A pause ends the busy period: the count starts again.
	for range backgroundBulkFiles + 1 {
		slow.end()
	}
	clk.advance(backgroundQuiet)
	slow.begin("g")
	if bulk(slow) {
		t.Error("still in bulk after a pause")
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

// TestPassthroughReopen checks that a file opened again and again, each
// open right after the last handle's release, always opens: the kernel
// refuses, with EIO, an open with a new passthrough backing file while the
// inode is still in the io mode of the handle being released. Here a file
// of several chunks served from its whole-file entry, read whole each time.
func TestPassthroughReopen(t *testing.T) {
	l := fullLayer(t)
	want := l.entries[7].data // big: 40 chunks
	f := newFS(t, newOpener(l), WithCache(newDirCache(t)), WithBackgroundFetch(false))
	mp := mountLayer(t, f, l)
	if f.mounts[mp].server.KernelSettings().Flags64()&fuse.CAP_PASSTHROUGH == 0 {
		t.Skip("kernel without FUSE passthrough")
	}
	p := filepath.Join(mp, "big")
	if !waitPassthrough(t, f, p, want) {
		t.Fatal("the file is not served by passthrough")
	}
	buf := make([]byte, 128<<10)
	for i := range 2000 {
		fh, err := os.Open(p)
		if err != nil {
			t.Fatalf("open %d: %v", i+1, err)
		}
		var got int
		for err == nil {
			var n int
			n, err = fh.Read(buf)
			got += n
		}
		fh.Close()
		if err != io.EOF || got != len(want) {
			t.Fatalf("read %d: %d bytes, %v", i+1, got, err)
		}
	}
}
