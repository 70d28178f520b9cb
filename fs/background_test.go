package fs

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
)

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
	var st []LayerStats
	local := eventually(20*time.Second, func() bool {
		st = f.Stats()
		return len(st) != 1 || !st[0].FullyLocal.IsZero()
	})
	if len(st) != 1 {
		t.Fatalf("stats of %d layers, want 1", len(st))
	}
	if !local {
		t.Fatalf("layer not fully local: %+v", st[0])
	}
	return st[0]
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
