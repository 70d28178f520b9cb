package fs

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/hanwen/go-fuse/v2/fuse"
	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// multiLayer holds "multi", a file of 8 chunks, and a small file.
func multiLayer(t testing.TB) *testLayer {
	return buildLayer(t, []tarEntry{
		file("multi", 0o644, randomBytes(21, 2<<20)),
		file("small", 0o644, []byte("small")),
	}, estargz.WithChunkSize(256<<10), estargz.WithCompressionLevel(gzip.BestSpeed))
}

// skipWithoutPassthrough skips the test if the kernel of the mount at mp
// has no FUSE passthrough.
func skipWithoutPassthrough(t testing.TB, f *FileSystem, mp string) {
	t.Helper()
	f.mu.Lock()
	server := f.mounts[mp].server
	f.mu.Unlock()
	if server.KernelSettings().Flags64()&fuse.CAP_PASSTHROUGH == 0 {
		t.Skip("kernel without FUSE passthrough")
	}
}

// wholeMount is multiLayer mounted with a directory cache and no
// background fetch, on a kernel with FUSE passthrough.
type wholeMount struct {
	l    *testLayer
	want []byte // the content of its file of several chunks, multi
	c    *dirCache
	o    *testOpener
	f    *FileSystem
	p    string // the path of multi
}

func mountWhole(t *testing.T) wholeMount {
	t.Helper()
	m := wholeMount{l: multiLayer(t), c: newDirCache(t)}
	m.want = m.l.entries[0].data
	m.o = newOpener(m.l)
	m.f = newFS(t, m.o, WithCache(m.c), WithBackgroundFetch(false))
	mp := mountLayer(t, m.f, m.l)
	skipWithoutPassthrough(t, m.f, mp)
	m.p = filepath.Join(mp, "multi")
	return m
}

// readCheck opens p, drops the mount's page cache of it, reads it whole and
// checks its content. It reports whether no read reached f, that is
// whether the open was served by passthrough.
func readCheck(t testing.TB, f *FileSystem, p string, want []byte) (passthrough bool) {
	t.Helper()
	fh, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if err := unix.Fadvise(int(fh.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	before := f.Stats()[0].Reads
	got, err := io.ReadAll(fh)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read %s: %d bytes, %v; want its %d bytes", p, len(got), err, len(want))
	}
	return f.Stats()[0].Reads == before
}

// waitPassthrough reads p, checking its content, until an open of it is
// served by passthrough, and reports whether one was within a few seconds.
func waitPassthrough(t testing.TB, f *FileSystem, p string, want []byte) bool {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		if readCheck(t, f, p, want) {
			// An open right after a release is not served by
			// passthrough (see reopenQuiet).
			time.Sleep(2 * reopenQuiet)
			return true
		}
		time.Sleep(2 * reopenQuiet)
	}
	return false
}

// cachedAs reports whether c holds want under its digest.
func cachedAs(t testing.TB, c *dirCache, want []byte) bool {
	t.Helper()
	got, err := os.ReadFile(c.path(digest.FromBytes(want)))
	return err == nil && bytes.Equal(got, want)
}

// TestWholeFilePassthrough checks that a file of several chunks, once read
// whole, is served by passthrough from a whole-file entry, with the same
// bytes and no fetch; that a remount finds that entry (its first open
// verifies it, in the background); and that with passthrough off no entry
// is assembled.
func TestWholeFilePassthrough(t *testing.T) {
	m := mountWhole(t)
	l, want, c, f, p := m.l, m.want, m.c, m.f, m.p
	if readCheck(t, f, p, want) {
		t.Fatal("the first read, of a file not cached, was not served by the FileSystem")
	}
	if !waitPassthrough(t, f, p, want) {
		t.Fatal("a file read whole is not served by passthrough")
	}
	if !cachedAs(t, c, want) {
		t.Error("no whole-file entry in the cache")
	}

	t.Run("remount", func(t *testing.T) {
		o := newOpener(l)
		f := newFS(t, o, WithCache(c), WithBackgroundFetch(false))
		p := filepath.Join(mountLayer(t, f, l), "multi")
		if !waitPassthrough(t, f, p, want) {
			t.Error("the whole-file entry is not served after a remount")
		}
		if n := reads(o); n != 0 {
			t.Errorf("%d fetches, want 0", n)
		}
	})
	t.Run("off", func(t *testing.T) {
		l := multiLayer(t)
		c := newDirCache(t)
		f := newFS(t, newOpener(l), WithCache(c), WithBackgroundFetch(false), WithPassthrough(false))
		p := filepath.Join(mountLayer(t, f, l), "multi")
		for range 3 {
			if readCheck(t, f, p, want) {
				t.Fatal("served without reads with passthrough off")
			}
		}
		waitFetches(t, f)
		if cachedAs(t, c, want) {
			t.Error("whole-file entry assembled with passthrough off")
		}
	})
}

// TestWholeFileAfterBackgroundFetch checks that a file the background
// fetch made local, never read, is served by passthrough from its second
// open on.
func TestWholeFileAfterBackgroundFetch(t *testing.T) {
	l := multiLayer(t)
	f := newFS(t, newOpener(l), WithCache(newDirCache(t)), WithBackgroundFetchDelay(0))
	mp := mountLayer(t, f, l)
	skipWithoutPassthrough(t, f, mp)
	for deadline := time.Now().Add(5 * time.Second); f.Stats()[0].FullyLocal.IsZero(); {
		if time.Now().After(deadline) {
			t.Fatal("background fetch not done")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !waitPassthrough(t, f, filepath.Join(mp, "multi"), l.entries[0].data) {
		t.Error("a file fetched in the background is not served by passthrough")
	}
}

// TestWholeFileCorrupt checks that a whole-file entry that is corrupt or
// torn is never served: every read returns the file's bytes, and the entry
// is assembled again from the chunks, then served.
func TestWholeFileCorrupt(t *testing.T) {
	m := mountWhole(t)
	l, want, c := m.l, m.want, m.c
	if !waitPassthrough(t, m.f, m.p, want) {
		t.Fatal("no passthrough to begin with")
	}
	for name, bad := range map[string][]byte{
		"corrupt": append(append(bytes.Clone(want[:1<<20]), want[1<<20]^1), want[1<<20+1:]...),
		"torn":    want[:len(want)-100],
	} {
		t.Run(name, func(t *testing.T) {
			key := digest.FromBytes(want)
			if err := c.Put(key, bad); err != nil {
				t.Fatal(err)
			}
			f := newFS(t, newOpener(l), WithCache(c), WithBackgroundFetch(false))
			p := filepath.Join(mountLayer(t, f, l), "multi")
			for range 3 {
				readCheck(t, f, p, want)
			}
			if !waitPassthrough(t, f, p, want) {
				t.Error("the entry was not assembled again")
			}
			if !cachedAs(t, c, want) {
				t.Error("the bad entry is still in the cache")
			}
		})
	}
}

// TestWholeFileEvictedWhileOpen checks that a file served by passthrough
// reads correctly after its entry is evicted, and that the next open is
// served from the chunks.
func TestWholeFileEvictedWhileOpen(t *testing.T) {
	m := mountWhole(t)
	want, c, o, f, p := m.want, m.c, m.o, m.f, m.p
	if !waitPassthrough(t, f, p, want) {
		t.Fatal("no passthrough to begin with")
	}
	fh, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if err := os.Remove(c.path(digest.FromBytes(want))); err != nil {
		t.Fatal(err)
	}
	before, fetched := f.Stats()[0].Reads, reads(o)
	if got, err := io.ReadAll(fh); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read of the evicted entry: %d bytes, %v", len(got), err)
	}
	if n := f.Stats()[0].Reads - before; n != 0 {
		t.Errorf("%d reads through the FileSystem while the entry was open", n)
	}
	fh.Close()
	readCheck(t, f, p, want)
	if n := reads(o) - fetched; n != 0 {
		t.Errorf("%d fetches after the eviction, want 0: the chunks are cached", n)
	}
}

// TestWholeFileMixedOpens checks that opens of a file that overlap while
// its whole-file entry becomes ready all read it correctly (the kernel
// refuses an open with passthrough while one without is open, and the
// other way round), and that an open while one with passthrough is open
// shares its backing file.
func TestWholeFileMixedOpens(t *testing.T) {
	m := mountWhole(t)
	want, c, f, p := m.want, m.c, m.f, m.p
	first, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	readCheck(t, f, p, want) // its release assembles the entry
	for deadline := time.Now().Add(5 * time.Second); !cachedAs(t, c, want); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("whole-file entry not assembled")
		}
	}
	waitFetches(t, f)
	second, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	first.Close()
	readCheck(t, f, p, want) // while second, without passthrough, is open
	if got, err := io.ReadAll(second); err != nil || !bytes.Equal(got, want) {
		t.Errorf("read: %d bytes, %v", len(got), err)
	}
	second.Close()
	if !waitPassthrough(t, f, p, want) {
		t.Fatal("no passthrough once every open was closed")
	}
	pt, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer pt.Close()
	if !readCheck(t, f, p, want) {
		t.Error("an open while one with passthrough is open is not served by passthrough")
	}
}
