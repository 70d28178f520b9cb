package cache

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"testing/iotest"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
)

func TestMain(m *testing.M) {
	if err := log.SetLevel("error"); err != nil {
		panic(err)
	}
	os.Exit(m.Run())
}

// newDir opens the cache at root, closed when the test ends.
func newDir(t testing.TB, root string, opts ...Option) *Dir {
	t.Helper()
	d, err := NewDir(root, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return d
}

// indexed waits for d's background indexing.
func indexed(d *Dir) *Dir {
	<-d.indexed
	return d
}

// chunk returns n bytes derived from seed, and their digest.
func chunk(seed, n int) ([]byte, digest.Digest) {
	b := bytes.Repeat([]byte(fmt.Sprintf("chunk %d|", seed)), n/8+1)[:n]
	return b, digest.FromBytes(b)
}

func put(t testing.TB, d *Dir, seed, n int) digest.Digest {
	t.Helper()
	data, key := chunk(seed, n)
	if err := d.Put(key, data); err != nil {
		t.Fatal(err)
	}
	return key
}

func has(d *Dir, key digest.Digest) bool {
	path, _ := d.path(key)
	_, err := os.Stat(path)
	return err == nil
}

// checkIndex checks that the index and the files on disk agree: same keys,
// same sizes, the byte count and the bound respected.
func checkIndex(t *testing.T, d *Dir) {
	t.Helper()
	onDisk := map[digest.Digest]int64{}
	err := filepath.WalkDir(filepath.Join(d.root, "sha256"), func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		onDisk[digest.NewDigestFromEncoded(digest.SHA256, e.Name())] = info.Size()
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var sum int64
	for k, el := range d.entries {
		e := el.Value.(*entry)
		sum += e.size
		if size, ok := onDisk[k]; !ok || size != e.size {
			t.Errorf("index has %s (%d bytes), disk has %d bytes (%v)", k, e.size, size, ok)
		}
	}
	if len(onDisk) != len(d.entries) || d.lru.Len() != len(d.entries) {
		t.Errorf("%d files, %d indexed, %d in the LRU list", len(onDisk), len(d.entries), d.lru.Len())
	}
	if sum != d.size || d.size > d.limit {
		t.Errorf("indexed bytes %d, counted %d, bound %d", sum, d.size, d.limit)
	}
	if ents, err := os.ReadDir(d.tmp.path); err != nil || len(ents) != 0 {
		t.Errorf("temp files left: %v %v", ents, err)
	}
}

func TestPutGet(t *testing.T) {
	d := newDir(t, t.TempDir())
	data := []byte("hello chunk")
	key := digest.FromBytes(data)
	if err := d.Put(key, data); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 64)
	n, ok := d.Get(key, p)
	if !ok || !bytes.Equal(p[:n], data) {
		t.Fatalf("Get = %q, %v; want %q", p[:n], ok, data)
	}
	enc := key.Encoded()
	if _, err := os.Stat(filepath.Join(d.Root(), "sha256", enc[:2], enc)); err != nil {
		t.Fatalf("entry not at its fan-out path: %v", err)
	}
	if size, ok := d.Has(key); !ok || size != int64(len(data)) {
		t.Errorf("Has = %d, %v", size, ok)
	}
	if st := d.Stats(); st.Hits != 1 || st.Entries != 1 || st.Bytes != int64(len(data)) {
		t.Errorf("Stats = %+v", st)
	}
}

func TestGetMiss(t *testing.T) {
	d := newDir(t, t.TempDir())
	data := []byte("0123456789")
	key := digest.FromBytes(data)
	if _, ok := d.Get(key, make([]byte, 10)); ok {
		t.Fatal("Get of an absent key succeeded")
	}
	if err := d.Put(key, data); err != nil {
		t.Fatal(err)
	}
	if _, ok := d.Get(key, make([]byte, 9)); ok {
		t.Fatal("Get into a too small buffer succeeded")
	}
	if err := d.Delete(key); err != nil {
		t.Fatal(err)
	}
	if _, ok := d.Get(key, make([]byte, 10)); ok {
		t.Fatal("Get after Delete succeeded")
	}
	if err := d.Delete(key); err != nil {
		t.Fatalf("Delete of an absent key: %v", err)
	}
	if st := d.Stats(); st.Misses != 3 || st.Hits != 0 || st.Entries != 0 || st.Bytes != 0 {
		t.Errorf("Stats = %+v", st)
	}
}

func TestPutReplaces(t *testing.T) {
	d := newDir(t, t.TempDir())
	key := digest.FromString("x")
	if err := d.Put(key, []byte("corrupt")); err != nil {
		t.Fatal(err)
	}
	if err := d.Put(key, []byte("x")); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 16)
	if n, ok := d.Get(key, p); !ok || string(p[:n]) != "x" {
		t.Fatalf("Get = %q, %v; want the replacement", p[:n], ok)
	}
	indexed(d)
	checkIndex(t, d)
}

func TestInvalidKey(t *testing.T) {
	d := newDir(t, t.TempDir())
	for _, key := range []digest.Digest{"", "sha256:../../etc", "sha256:abc", "md5:00"} {
		if err := d.Put(key, []byte("x")); err == nil {
			t.Errorf("Put(%q) succeeded", key)
		}
		if _, ok := d.Get(key, make([]byte, 1)); ok {
			t.Errorf("Get(%q) succeeded", key)
		}
	}
}

func TestOptions(t *testing.T) {
	if _, err := NewDir(t.TempDir(), WithMaxSize(-1)); !errdefs.IsInvalidArgument(err) {
		t.Errorf("WithMaxSize(-1): %v, want InvalidArgument", err)
	}
	d := newDir(t, t.TempDir())
	if st := d.Stats(); st.Limit != DefaultMaxSize {
		t.Errorf("default limit %d, want %d", st.Limit, int64(DefaultMaxSize))
	}
	d = newDir(t, t.TempDir(), WithMaxSize(0))
	if st := d.Stats(); st.Limit != 0 {
		t.Errorf("WithMaxSize(0): limit %d, want 0 (none)", st.Limit)
	}
}

// Dirs share a directory (two data planes during an upgrade): each sees
// what the other stores, an eviction by one costs the other a miss and
// nothing else, and neither removes the other's files being written.
func TestShared(t *testing.T) {
	root := t.TempDir()
	a := indexed(newDir(t, root, WithMaxSize(300)))
	b := indexed(newDir(t, root))
	k1 := put(t, a, 1, 100)
	p := make([]byte, 100)
	if n, ok := b.Get(k1, p); !ok || n != 100 || digest.FromBytes(p) != k1 {
		t.Fatalf("entry stored by one Dir not found by the other: %d, %v", n, ok)
	}
	// b writes through its own temporary directory, which a third Dir
	// on the same root leaves alone.
	inFlight := filepath.Join(b.tmp.path, "being-written")
	if err := os.WriteFile(inFlight, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newDir(t, root)
	if _, err := os.Stat(inFlight); err != nil {
		t.Errorf("a new Dir removed a live Dir's temporary file: %v", err)
	}
	if err := os.Remove(inFlight); err != nil {
		t.Fatal(err)
	}
	// a evicts k1, which b still indexes: b misses and stores it again.
	put(t, a, 2, 100)
	put(t, a, 3, 100)
	put(t, a, 4, 100)
	if _, ok := a.Get(k1, p); ok {
		t.Fatal("k1 not evicted")
	}
	if _, ok := b.Get(k1, p); ok {
		t.Fatal("b read an entry a evicted")
	}
	if put(t, b, 1, 100) != k1 {
		t.Fatal("chunk 1 changed")
	}
	if n, ok := c.Get(k1, p); !ok || n != 100 || digest.FromBytes(p) != k1 {
		t.Errorf("entry stored again not found: %d, %v", n, ok)
	}
}

// TestNewDirRemovesDeadTemps checks that a Dir opened beside a live one
// removes the temporary directory of a Dir that died (here: one whose lock
// nobody holds).
func TestNewDirRemovesDeadTemps(t *testing.T) {
	root := t.TempDir()
	newDir(t, root)
	dead := filepath.Join(root, tmpName, "dead")
	if err := os.MkdirAll(dead, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dead, "torn"), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	newDir(t, root)
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("temporary directory of a dead Dir survived: %v", err)
	}
}

// TestLRU checks that Put evicts the least recently used entries, Get
// counting as a use.
func TestLRU(t *testing.T) {
	d := indexed(newDir(t, t.TempDir(), WithMaxSize(300)))
	a, b, c := put(t, d, 1, 100), put(t, d, 2, 100), put(t, d, 3, 100)
	if _, ok := d.Get(a, make([]byte, 100)); !ok {
		t.Fatal("Get(a) missed")
	}
	e := put(t, d, 4, 100) // evicts b, the least recently used
	for key, want := range map[digest.Digest]bool{a: true, b: false, c: true, e: true} {
		if has(d, key) != want {
			t.Errorf("entry %d present = %v, want %v", map[digest.Digest]int{a: 1, b: 2, c: 3, e: 4}[key], !want, want)
		}
	}
	f := put(t, d, 5, 150) // evicts c and a
	if has(d, c) || has(d, a) || !has(d, e) || !has(d, f) {
		t.Errorf("after a 150 byte Put: a %v c %v e %v f %v, want only e and f", has(d, a), has(d, c), has(d, e), has(d, f))
	}
	if st := d.Stats(); st.Evictions != 3 || st.Entries != 2 || st.Bytes != 250 {
		t.Errorf("Stats = %+v", st)
	}
	// An entry larger than the bound is not stored, and evicts nothing.
	big, key := chunk(6, 301)
	if err := d.Put(key, big); err != nil || has(d, key) || !has(d, e) {
		t.Errorf("Put of an entry over the bound: %v, stored %v", err, has(d, key))
	}
	checkIndex(t, d)
}

// TestRestart checks that a new Dir over the same root serves the entries
// of the old one, and that the mtime carries recency across the restart:
// the reindexed cache evicts the least recently used entries down to its
// (smaller) bound.
func TestRestart(t *testing.T) {
	root := t.TempDir()
	d, err := NewDir(root, WithMaxSize(0))
	if err != nil {
		t.Fatal(err)
	}
	indexed(d)
	base := time.Now().Add(-time.Hour)
	var keys []digest.Digest
	for i := range 5 {
		keys = append(keys, put(t, d, i, 100))
		path, _ := d.path(keys[i])
		mt := base.Add(time.Duration(i) * time.Second)
		if err := os.Chtimes(path, mt, mt); err != nil {
			t.Fatal(err)
		}
		d.entries[keys[i]].Value.(*entry).touched = mt.UnixNano()
	}
	// A hit on the oldest entry, more than touchInterval after it was
	// written, makes it the newest on disk too.
	later := base.Add(time.Minute + 10*time.Second)
	d.now = func() time.Time { return later }
	if _, ok := d.Get(keys[0], make([]byte, 100)); !ok {
		t.Fatal("Get missed")
	}
	path, _ := d.path(keys[0])
	if st, err := os.Stat(path); err != nil || !st.ModTime().Equal(later) {
		t.Fatalf("mtime of a used entry: %v %v, want %v", st.ModTime(), err, later)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	d = indexed(newDir(t, root, WithMaxSize(300)))
	// Kept: 0 (used last), 4 and 3; evicted: 1 and 2.
	for i, want := range []bool{true, false, false, true, true} {
		n, ok := d.Get(keys[i], make([]byte, 100))
		if ok != want || ok && n != 100 {
			t.Errorf("entry %d after restart: Get = %d, %v; want present = %v", i, n, ok, want)
		}
	}
	if st := d.Stats(); st.Entries != 3 || st.Bytes != 300 || st.Evictions != 2 || st.Indexing {
		t.Errorf("Stats = %+v", st)
	}
	checkIndex(t, d)
}

// TestUseWhileIndexing checks that Get, Put and Has work before the index
// is complete, that eviction waits for it, and that an old entry hit
// meanwhile counts as recently used.
func TestUseWhileIndexing(t *testing.T) {
	root := t.TempDir()
	d := indexed(newDir(t, root, WithMaxSize(0)))
	base := time.Now().Add(-time.Hour)
	var old []digest.Digest
	for i := range 4 {
		old = append(old, put(t, d, i, 100))
		path, _ := d.path(old[i])
		mt := base.Add(time.Duration(i) * time.Second)
		if err := os.Chtimes(path, mt, mt); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	indexGate = make(chan struct{})
	t.Cleanup(func() { indexGate = nil })
	d = newDir(t, root, WithMaxSize(300))
	if _, ok := d.Get(old[0], make([]byte, 100)); !ok { // the oldest, hit
		t.Fatal("Get while indexing missed")
	}
	if err := d.Delete(old[3]); err != nil { // the newest, deleted
		t.Fatal(err)
	}
	fresh := put(t, d, 10, 100)
	if st := d.Stats(); !st.Indexing || st.Evictions != 0 {
		t.Fatalf("Stats while indexing = %+v", st)
	}
	for key, want := range map[digest.Digest]bool{fresh: true, old[1]: true, old[3]: false} {
		if size, ok := d.Has(key); ok != want || ok && size != 100 {
			t.Errorf("Has(%s) while indexing = %d, %v; want present: %v", key, size, ok, want)
		}
	}
	close(indexGate)
	indexed(d)
	// Candidates, most recent first: fresh, 0 (hit), 2, 1; 3 is gone.
	for key, want := range map[digest.Digest]bool{fresh: true, old[0]: true, old[2]: true, old[1]: false, old[3]: false} {
		if has(d, key) != want {
			t.Errorf("%s present = %v, want %v", key, !want, want)
		}
		if size, ok := d.Has(key); ok != want || ok && size != 100 {
			t.Errorf("Has(%s) = %d, %v; want present: %v", key, size, ok, want)
		}
	}
	checkIndex(t, d)
}

// A crash can leave an entry short or garbled: Get returns the file's bytes
// as they are, and the consumer's check against the key (see
// TestFSRejectsTornEntries for the real consumer) rejects them. An empty
// entry, the usual remains of a rename whose data never reached the disk,
// is dropped when the cache is reopened.
func TestTornEntries(t *testing.T) {
	root := t.TempDir()
	d := indexed(newDir(t, root))
	short, empty := put(t, d, 1, 1000), put(t, d, 2, 1000)
	for key, size := range map[digest.Digest]int64{short: 10, empty: 0} {
		path, _ := d.path(key)
		if err := os.Truncate(path, size); err != nil {
			t.Fatal(err)
		}
	}
	p := make([]byte, 1000)
	if n, ok := d.Get(short, p); ok && n == 1000 && digest.FromBytes(p) == short {
		t.Error("a truncated entry was returned whole")
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d = indexed(newDir(t, root))
	if _, ok := d.Get(empty, p); ok || has(d, empty) {
		t.Error("an empty entry survived reopening")
	}
	// The entry of empty content is the one empty entry that is valid.
	if err := d.Put(digest.FromBytes(nil), nil); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d = indexed(newDir(t, root))
	if n, ok := d.Get(digest.FromBytes(nil), p); !ok || n != 0 {
		t.Errorf("Get of the empty entry = %d, %v", n, ok)
	}
}

func TestNewDirRemovesTemps(t *testing.T) {
	root := t.TempDir()
	d, err := NewDir(root)
	if err != nil {
		t.Fatal(err)
	}
	key := digest.FromString("kept")
	if err := d.Put(key, []byte("kept")); err != nil {
		t.Fatal(err)
	}
	torn := filepath.Join(root, tmpName, "leftover")
	if err := os.WriteFile(torn, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d = newDir(t, root)
	if _, err := os.Stat(torn); !os.IsNotExist(err) {
		t.Fatalf("temp file survived NewDir: %v", err)
	}
	if _, ok := d.Get(key, make([]byte, 4)); !ok {
		t.Fatal("entry lost by NewDir")
	}
}

// TestOpen checks that an opened entry stays readable, whole, after it is
// evicted: the unlinked file lives until its last descriptor is closed.
func TestOpen(t *testing.T) {
	d := indexed(newDir(t, t.TempDir(), WithMaxSize(4096)))
	data, key := chunk(1, 4096)
	if err := d.Put(key, data); err != nil {
		t.Fatal(err)
	}
	f, err := d.Open(key)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	put(t, d, 2, 4096) // evicts key
	if has(d, key) {
		t.Fatal("entry not evicted")
	}
	got, err := io.ReadAll(f)
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("read of an evicted open entry: %d bytes, %v", len(got), err)
	}
	_, err = d.Open(key)
	if !errdefs.IsNotFound(err) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open of an evicted entry: %v, want NotFound and fs.ErrNotExist", err)
	}
	if st := d.Stats(); st.Hits != 1 || st.Misses != 1 {
		t.Errorf("Stats = %+v", st)
	}
}

// TestPutFrom checks that PutFrom stores a streamed entry as Put would,
// counted against the bound, and stores nothing when its reader fails, when
// the reader yields a size other than announced, or when the entry is
// larger than the bound, which it then does not read.
func TestPutFrom(t *testing.T) {
	d := indexed(newDir(t, t.TempDir(), WithMaxSize(1000)))
	old := put(t, d, 1, 400)
	data, key := chunk(2, 700)
	if err := d.PutFrom(key, int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 1000)
	if n, ok := d.Get(key, got); !ok || !bytes.Equal(got[:n], data) {
		t.Errorf("Get after PutFrom: %d bytes, %v", n, ok)
	}
	if has(d, old) {
		t.Error("the older entry was not evicted to make room")
	}

	refused := errors.New("does not match its digest")
	other, okey := chunk(3, 300)
	for name, r := range map[string]io.Reader{
		"failing":  io.MultiReader(bytes.NewReader(other), iotest.ErrReader(refused)),
		"short":    bytes.NewReader(other[:299]),
		"too long": bytes.NewReader(append(bytes.Clone(other), 'x')),
	} {
		err := d.PutFrom(okey, int64(len(other)), r)
		if err == nil || has(d, okey) {
			t.Errorf("%s reader: %v, stored %v", name, err, has(d, okey))
		}
		if name == "failing" && !errors.Is(err, refused) {
			t.Errorf("failing reader: %v, want the reader's error", err)
		}
	}
	if st := d.Stats(); st.WriteErrors != 0 || d.paused() {
		t.Errorf("reader errors counted as write errors: %+v", st)
	}
	big, bkey := chunk(4, 1001)
	r := &countReader{r: bytes.NewReader(big)}
	if err := d.PutFrom(bkey, int64(len(big)), r); err != nil || has(d, bkey) || r.n != 0 {
		t.Errorf("PutFrom over the bound: %v, stored %v, %d bytes read", err, has(d, bkey), r.n)
	}
	checkIndex(t, d)
}

type countReader struct {
	r io.Reader
	n int
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}
