package fs

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
)

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
