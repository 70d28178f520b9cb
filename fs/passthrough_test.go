package fs

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	digest "github.com/opencontainers/go-digest"
)

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
	skipWithoutPassthrough(t, warm, mp)
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
	skipWithoutPassthrough(t, f, mp)
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
