package cache_test

// These tests hold the cache to the contract it has with its consumer, the
// layer filesystems of package fs, where that contract lives: a corrupt
// entry is never served, and a cache that cannot write never fails a read.

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"io/fs"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/cache"
	lazyfs "github.com/lazypull/lazypull/fs"
)

// layer is an eStargz blob of a small file and a big one of several chunks.
type layer struct {
	blob       []byte
	dgst, toc  digest.Digest
	small, big []byte
}

func newLayer(t *testing.T, bigSize int) *layer {
	t.Helper()
	rng := rand.New(rand.NewSource(1))
	l := &layer{small: []byte("hello, cached world\n"), big: make([]byte, bigSize)}
	rng.Read(l.big)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, data := range map[string][]byte{"small": l.small, "big": l.big} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := estargz.Build(io.NewSectionReader(bytes.NewReader(buf.Bytes()), 0, int64(buf.Len())), estargz.WithChunkSize(16<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if l.blob, err = io.ReadAll(b); err != nil {
		t.Fatal(err)
	}
	l.dgst, l.toc = digest.FromBytes(l.blob), b.TOCDigest()
	return l
}

// registry serves one layer blob and counts its reads.
type registry struct {
	l     *layer
	mu    sync.Mutex
	reads int
}

func (r *registry) Open(ctx context.Context, ref string, dgst digest.Digest, tail int64) (lazyfs.Blob, []byte, error) {
	tail = min(tail, int64(len(r.l.blob)))
	return r, r.l.blob[int64(len(r.l.blob))-tail:], nil
}

func (r *registry) Size() int64 { return int64(len(r.l.blob)) }

func (r *registry) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	r.mu.Lock()
	r.reads++
	r.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(r.l.blob)) {
		return 0, io.ErrUnexpectedEOF
	}
	return copy(p, r.l.blob[off:]), nil
}

// readLayer mounts l with c as the cache, reads both files, checks their
// content and unmounts. It returns the number of blob reads.
func readLayer(t *testing.T, l *layer, c lazyfs.Cache) int {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting FUSE needs root")
	}
	r := &registry{l: l}
	f, err := lazyfs.New(filepath.Join(t.TempDir(), "state"), r, lazyfs.WithCache(c), lazyfs.WithMemoryCacheSize(0))
	if err != nil {
		t.Fatal(err)
	}
	mp := t.TempDir()
	labels := map[string]string{
		lazyfs.LabelImageRef:    "registry.test/img:latest",
		lazyfs.LabelLayerDigest: l.dgst.String(),
		lazyfs.LabelTOCDigest:   l.toc.String(),
	}
	if err := f.Mount(context.Background(), mp, labels); err != nil {
		f.Close()
		t.Fatal(err)
	}
	for name, want := range map[string][]byte{"small": l.small, "big": l.big} {
		got, err := os.ReadFile(filepath.Join(mp, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("read %s: %d bytes, %v; want its %d bytes", name, len(got), err, len(want))
		}
	}
	if err := f.Unmount(context.Background(), mp); err != nil {
		t.Error(err)
	}
	if err := f.Close(); err != nil {
		t.Error(err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reads
}

// entryFiles returns the entry files under root.
func entryFiles(t *testing.T, root string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(filepath.Join(root, "sha256"), func(p string, e fs.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() {
			files = append(files, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestFSRejectsTornEntries checks that entries a crash left short or
// garbled are fetched again rather than served, and are then repaired when
// read; and that intact entries are served after a restart with no fetch.
func TestFSRejectsTornEntries(t *testing.T) {
	l := newLayer(t, 100<<10)
	root := t.TempDir()
	open := func() *cache.Dir {
		c, err := cache.NewDir(root)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := open()
	readLayer(t, l, c)
	c.Close()
	files := entryFiles(t, root)
	if len(files) < 3 {
		t.Fatalf("%d cache entries after reading the layer", len(files))
	}

	c = open()
	if reads := readLayer(t, l, c); reads != 0 {
		t.Errorf("restarted cache: %d blob reads, want none", reads)
	}
	c.Close()

	for i, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			data = data[:len(data)/2]
		} else {
			data[len(data)/2] ^= 0xff
		}
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c = open()
	if reads := readLayer(t, l, c); reads == 0 {
		t.Error("corrupt entries: no blob read")
	}
	c.Close()
	// The entries of what the files hold were read, found corrupt and
	// replaced; an entry nothing read (the layer's landmark) is verified
	// when something does.
	read := map[string]bool{digest.FromBytes(l.small).Encoded(): true, digest.FromBytes(l.big).Encoded(): true}
	for off := 0; off < len(l.big); off += 16 << 10 {
		read[digest.FromBytes(l.big[off:min(off+16<<10, len(l.big))]).Encoded()] = true
	}
	for _, p := range entryFiles(t, root) {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if want := filepath.Base(p); read[want] && digest.FromBytes(data).Encoded() != want {
			t.Errorf("entry %s not repaired", want)
		}
	}
}

// TestFSFullDisk reads a layer through a cache whose disk is too small for
// it: every read succeeds from the registry, and the cache records its
// failed write.
func TestFSFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	disk := t.TempDir()
	if err := unix.Mount("tmpfs", disk, "tmpfs", 0, "size=64k"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(disk, unix.MNT_DETACH); err != nil {
			t.Error(err)
		}
	})
	c, err := cache.NewDir(disk, cache.WithMaxSize(0))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	l := newLayer(t, 1<<20)
	readLayer(t, l, c)
	if st := c.Stats(); st.WriteErrors == 0 {
		t.Errorf("no write error on a full disk: %+v", st)
	}
}

// TestFSWholeFileEntries checks the whole-file entries from which FUSE
// passthrough serves a file of several chunks: once the file has been
// read, one is stored and counted against the bound like any entry (with
// room for one copy of the file only, the file's chunks make room for
// it); a file larger than the bound gets none. Every read returns the
// file's bytes, and the bound holds.
func TestFSWholeFileEntries(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting FUSE needs root")
	}
	l := newLayer(t, 512<<10)
	key := digest.FromBytes(l.big)
	for _, tc := range []struct {
		name  string
		bound int64
		whole bool
	}{
		{"room for both", 4 << 20, true},
		{"room for one copy", 600 << 10, true},
		{"file over the bound", 256 << 10, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			c, err := cache.NewDir(root, cache.WithMaxSize(tc.bound))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			f, err := lazyfs.New(filepath.Join(t.TempDir(), "state"), &registry{l: l}, lazyfs.WithCache(c), lazyfs.WithBackgroundFetch(false))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			mp := t.TempDir()
			if err := f.Mount(context.Background(), mp, map[string]string{
				lazyfs.LabelImageRef:    "registry.test/img:latest",
				lazyfs.LabelLayerDigest: l.dgst.String(),
				lazyfs.LabelTOCDigest:   l.toc.String(),
			}); err != nil {
				t.Fatal(err)
			}
			read := func() {
				if got, err := os.ReadFile(filepath.Join(mp, "big")); err != nil || !bytes.Equal(got, l.big) {
					t.Fatalf("read: %d bytes, %v", len(got), err)
				}
			}
			read()
			for deadline := time.Now().Add(5 * time.Second); tc.whole && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
				if _, ok := c.Has(key); ok {
					break
				}
			}
			read()
			read()
			if err := f.Close(); err != nil { // waits for the entry being assembled
				t.Fatal(err)
			}
			if size, ok := c.Has(key); ok != tc.whole || ok && size != int64(len(l.big)) {
				t.Errorf("whole-file entry: %v (%d bytes), want %v", ok, size, tc.whole)
			}
			var onDisk int64
			for _, p := range entryFiles(t, root) {
				st, err := os.Stat(p)
				if err != nil {
					t.Fatal(err)
				}
				onDisk += st.Size()
			}
			if st := c.Stats(); st.Bytes > tc.bound || onDisk > tc.bound {
				t.Errorf("%d bytes indexed, %d on disk; bound %d", st.Bytes, onDisk, tc.bound)
			}
		})
	}
}
