package fs

import (
	"path/filepath"
	"testing"
)

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
