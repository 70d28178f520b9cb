package fs

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

var testTime = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

// tarEntry is an entry of a test layer; data is a regular file's content.
type tarEntry struct {
	hdr  tar.Header
	data []byte
}

func dir(name string, mode int64) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode}}
}

func file(name string, mode int64, data []byte) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data))}, data: data}
}

func link(typ byte, name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: typ, Name: name, Linkname: target, Mode: 0o777}}
}

func device(typ byte, name string, major, minor int64) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: typ, Name: name, Mode: 0o644, Devmajor: major, Devminor: minor}}
}

func randomBytes(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// testLayer is an eStargz blob built from entries.
type testLayer struct {
	entries []tarEntry
	blob    []byte
	dgst    digest.Digest
	toc     digest.Digest
}

func buildLayer(t testing.TB, entries []tarEntry, opts ...estargz.Option) *testLayer {
	t.Helper()
	raw := tarBytes(t, entries)
	b, err := estargz.Build(io.NewSectionReader(bytes.NewReader(raw), 0, int64(len(raw))), opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	blob, err := io.ReadAll(b)
	if err != nil {
		t.Fatal(err)
	}
	return &testLayer{entries: entries, blob: blob, dgst: digest.FromBytes(blob), toc: b.TOCDigest()}
}

func tarBytes(t testing.TB, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		h.ModTime, h.Uid, h.Gid, h.Format = testTime, 1000, 2000, tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func (l *testLayer) labels() map[string]string {
	return map[string]string{
		LabelImageRef:    "registry.test/img:latest",
		LabelLayerDigest: l.dgst.String(),
		LabelTOCDigest:   l.toc.String(),
	}
}

// span returns the blob range of the payload of file name, as the TOC says.
func (l *testLayer) span(t testing.TB, name string) (start, end int64) {
	t.Helper()
	r, err := estargz.Open(io.NewSectionReader(bytes.NewReader(l.blob), 0, int64(len(l.blob))))
	if err != nil {
		t.Fatal(err)
	}
	e, ok := r.Lookup(name)
	if !ok {
		t.Fatalf("%s not in TOC", name)
	}
	start = e.Offset
	for off := int64(0); off < e.Size; {
		ce, ok := r.ChunkEntryForOffset(name, off)
		if !ok {
			t.Fatalf("no chunk of %s at %d", name, off)
		}
		end = ce.NextOffset()
		off = ce.ChunkOffset + ce.ChunkSize
	}
	return start, end
}

// testOpener serves blobs from memory and counts what is asked of it.
type testOpener struct {
	mu    sync.Mutex
	blobs map[digest.Digest][]byte
	opens map[digest.Digest]int
	reads int           // Blob.ReadAt calls
	bytes int64         // bytes returned by ReadAt, tails excluded
	tails int64         // bytes returned as tails
	gate  chan struct{} // if set, ReadAt waits for it to close
	// link, if set, makes ReadAt take the time the link would.
	link   *netLink
	stuck  map[digest.Digest]bool // Open of these waits for ctx
	failOn map[digest.Digest]error
	// manifests, if set, makes the opener a ManifestReader.
	manifests map[digest.Digest][]byte
	// hold, if set, holds back the bytes at holdFrom and after of a read
	// that starts before holdFrom, until it is closed; then the read ends
	// with holdErr if that is set.
	hold     chan struct{}
	holdFrom int64
	holdErr  error
	// held, if set, is closed when a read is held back.
	held     chan struct{}
	heldOnce sync.Once
}

// manifestOpener is a testOpener that reads manifests too.
type manifestOpener struct{ *testOpener }

func (o manifestOpener) Manifest(ctx context.Context, ref string, dgst digest.Digest) ([]byte, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	m, ok := o.manifests[dgst]
	if !ok {
		return nil, fmt.Errorf("manifest %s: %w", dgst, errdefs.ErrNotFound)
	}
	return m, nil
}

func newOpener(layers ...*testLayer) *testOpener {
	o := &testOpener{blobs: map[digest.Digest][]byte{}, opens: map[digest.Digest]int{}, stuck: map[digest.Digest]bool{}, failOn: map[digest.Digest]error{}}
	for _, l := range layers {
		o.blobs[l.dgst] = l.blob
	}
	return o
}

func (o *testOpener) Open(ctx context.Context, ref string, dgst digest.Digest, tail int64) (Blob, []byte, error) {
	o.mu.Lock()
	o.opens[dgst]++
	data, ok := o.blobs[dgst]
	stuck, failure := o.stuck[dgst], o.failOn[dgst]
	o.mu.Unlock()
	if stuck {
		<-ctx.Done()
		return nil, nil, ctx.Err()
	}
	if failure != nil {
		return nil, nil, failure
	}
	if !ok {
		return nil, nil, fmt.Errorf("blob %s: not found", dgst)
	}
	n := min(tail, int64(len(data)))
	o.mu.Lock()
	o.tails += n
	o.mu.Unlock()
	return &testBlob{o: o, data: data}, bytes.Clone(data[int64(len(data))-n:]), nil
}

func (o *testOpener) counts() (opens, reads int, fetched int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, n := range o.opens {
		opens += n
	}
	return opens, o.reads, o.bytes
}

func (o *testOpener) opensOf(d digest.Digest) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.opens[d]
}

type testBlob struct {
	o    *testOpener
	data []byte
}

func (b *testBlob) Size() int64 { return int64(len(b.data)) }

func (b *testBlob) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	b.o.mu.Lock()
	b.o.reads++
	gate, lk := b.o.gate, b.o.link
	b.o.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	if err := lk.transfer(ctx, len(p)); err != nil {
		return 0, err
	}
	if off < 0 || off+int64(len(p)) > int64(len(b.data)) {
		return 0, io.ErrUnexpectedEOF
	}
	b.o.mu.Lock()
	b.o.bytes += int64(len(p))
	b.o.mu.Unlock()
	return copy(p, b.data[off:]), nil
}

// ReadAtProgress reads like ReadAt and reports the bytes as they come: all
// at once, or those before o.holdFrom first (see testOpener.hold).
func (b *testBlob) ReadAtProgress(ctx context.Context, p []byte, off int64, progress func(int)) (int, error) {
	b.o.mu.Lock()
	hold, from, holdErr, held := b.o.hold, b.o.holdFrom, b.o.holdErr, b.o.held
	b.o.mu.Unlock()
	k := int(from - off)
	if hold == nil || k <= 0 || k >= len(p) {
		n, err := b.ReadAt(ctx, p, off)
		if err == nil {
			progress(n)
		}
		return n, err
	}
	if _, err := b.ReadAt(ctx, p[:k], off); err != nil {
		return 0, err
	}
	progress(k)
	if held != nil {
		b.o.heldOnce.Do(func() { close(held) })
	}
	select {
	case <-hold:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	if holdErr != nil {
		return 0, holdErr
	}
	if _, err := b.ReadAt(ctx, p[k:], from); err != nil {
		return 0, err
	}
	progress(len(p))
	return len(p), nil
}

// mapCache is a Cache in memory that counts its hits.
type mapCache struct {
	mu   sync.Mutex
	m    map[digest.Digest][]byte
	hits int
}

func newMapCache() *mapCache { return &mapCache{m: map[digest.Digest][]byte{}} }

func (c *mapCache) Get(key digest.Digest, p []byte) (int, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, ok := c.m[key]
	if !ok || len(b) > len(p) {
		return 0, false
	}
	c.hits++
	return copy(p, b), true
}

func (c *mapCache) Put(key digest.Digest, data []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[key] = bytes.Clone(data)
	return nil
}

// newFS returns a FileSystem closed when the test ends. Whatever it still
// has mounted then must be gone after Close; if not, it is detached so that
// no test leaves a mount behind.
func newFS(t testing.TB, o Opener, opts ...Option) *FileSystem {
	t.Helper()
	f, err := New(filepath.Join(t.TempDir(), "state"), o, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.mu.Lock()
		var mps []string
		for mp := range f.mounts {
			mps = append(mps, mp)
		}
		f.mu.Unlock()
		if err := f.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		for _, mp := range mps {
			if isMounted(t, mp) {
				t.Errorf("%s still mounted after Close", mp)
				unmountDetach(t, mp)
			}
		}
	})
	return f
}

// mountpoint returns an empty directory to mount on.
func mountpoint(t testing.TB) string {
	t.Helper()
	mp := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mp, 0o755); err != nil {
		t.Fatal(err)
	}
	return mp
}

// mountInfo returns the mountinfo line of mp, or "".
func mountInfo(t testing.TB, mp string) string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 && fields[4] == mp {
			return sc.Text()
		}
	}
	return ""
}

func isMounted(t testing.TB, mp string) bool { return mountInfo(t, mp) != "" }

func mountLayer(t testing.TB, f *FileSystem, l *testLayer) string {
	t.Helper()
	mp := mountpoint(t)
	if err := f.Mount(context.Background(), mp, l.labels()); err != nil {
		t.Fatalf("Mount: %v", err)
	}
	return mp
}

func unmountDetach(t testing.TB, mp string) {
	t.Helper()
	if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil {
		t.Errorf("unmount %s: %v", mp, err)
	}
}

func TestMain(m *testing.M) {
	if err := log.SetLevel("warn"); err != nil {
		panic(err)
	}
	os.Exit(m.Run())
}

// netLink models a network path: each request waits one round trip for its
// first byte, then its bytes cross a link of the given rate that requests
// share first come, first served.
type netLink struct {
	rtt  time.Duration
	rate float64 // bytes per second; 0 is unlimited

	mu   sync.Mutex
	free time.Time // when the link has sent what it was asked so far
}

func (k *netLink) transfer(ctx context.Context, n int) error {
	if k == nil {
		return nil
	}
	k.mu.Lock()
	done := time.Now().Add(k.rtt)
	if k.free.After(done) {
		done = k.free
	}
	if k.rate > 0 {
		done = done.Add(time.Duration(float64(n) / k.rate * float64(time.Second)))
	}
	k.free = done
	k.mu.Unlock()
	t := time.NewTimer(time.Until(done))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// dirCache is a FileCache of one file per entry in a directory.
type dirCache struct{ dir string }

func newDirCache(t testing.TB) *dirCache { return &dirCache{dir: t.TempDir()} }

func (c *dirCache) path(key digest.Digest) string { return filepath.Join(c.dir, key.Encoded()) }

func (c *dirCache) Get(key digest.Digest, p []byte) (int, bool) {
	b, err := os.ReadFile(c.path(key))
	if err != nil || len(b) > len(p) {
		return 0, false
	}
	return copy(p, b), true
}

func (c *dirCache) Put(key digest.Digest, data []byte) error {
	tmp, err := os.CreateTemp(c.dir, "tmp")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), c.path(key))
}

func (c *dirCache) Open(key digest.Digest) (*os.File, error) { return os.Open(c.path(key)) }

// PutFrom writes in pieces of 1 MiB, as cache.Dir does: the page cache
// keeps a file written in small pieces in small folios, which read slower.
func (c *dirCache) PutFrom(key digest.Digest, size int64, r io.Reader) error {
	tmp, err := os.CreateTemp(c.dir, "tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	w := bufio.NewWriterSize(struct{ io.Writer }{tmp}, 1<<20)
	n, err := io.Copy(w, r)
	if err == nil {
		err = w.Flush()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("%d bytes, want %d", n, size)
	}
	return os.Rename(tmp.Name(), c.path(key))
}

// libEntries is a directory of n modules of a few KiB each, in name order,
// as a starting interpreter reads them.
func libEntries(n int) []tarEntry {
	es := []tarEntry{dir("lib/", 0o755)}
	for i := range n {
		size := 2<<10 + (i*7919)%(30<<10)
		es = append(es, file(fmt.Sprintf("lib/m%03d.py", i), 0o644, randomBytes(int64(100+i), size)))
	}
	return es
}
