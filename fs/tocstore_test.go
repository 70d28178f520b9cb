package fs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
)

// sizedOpener is a testOpener that opens blobs of a known size without a
// round trip, and whose "network" can go down: then Open fails and reads
// of its blobs fail.
type sizedOpener struct {
	*testOpener
	mu    sync.Mutex
	sized int
	down  bool
	// sizedAs makes OpenSized of a digest open another blob.
	sizedAs map[digest.Digest]digest.Digest
}

func (o *sizedOpener) Open(ctx context.Context, ref string, dgst digest.Digest, tail int64) (Blob, []byte, error) {
	if o.isDown() {
		return nil, nil, fmt.Errorf("registry down: %w", errdefs.ErrUnavailable)
	}
	b, tailBytes, err := o.testOpener.Open(ctx, ref, dgst, tail)
	if err != nil {
		return nil, nil, err
	}
	return &downBlob{testBlob: b.(*testBlob), o: o}, tailBytes, nil
}

func (o *sizedOpener) OpenSized(ctx context.Context, ref string, dgst digest.Digest, size int64) (Blob, error) {
	o.mu.Lock()
	o.sized++
	if as, ok := o.sizedAs[dgst]; ok {
		dgst = as
	}
	o.mu.Unlock()
	o.testOpener.mu.Lock()
	data, ok := o.blobs[dgst]
	o.testOpener.mu.Unlock()
	if !ok || int64(len(data)) != size {
		return nil, fmt.Errorf("blob %s of size %d: %w", dgst, size, errdefs.ErrNotFound)
	}
	return &downBlob{testBlob: &testBlob{o: o.testOpener, data: data}, o: o}, nil
}

func (o *sizedOpener) isDown() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.down
}

func (o *sizedOpener) setDown(down bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.down = down
}

type downBlob struct {
	*testBlob
	o *sizedOpener
}

func (b *downBlob) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if b.o.isDown() {
		return 0, fmt.Errorf("registry down: %w", errdefs.ErrUnavailable)
	}
	return b.testBlob.ReadAt(ctx, p, off)
}

func (b *downBlob) ReadAtProgress(ctx context.Context, p []byte, off int64, progress func(int)) (int, error) {
	if b.o.isDown() {
		return 0, fmt.Errorf("registry down: %w", errdefs.ErrUnavailable)
	}
	return b.testBlob.ReadAtProgress(ctx, p, off, progress)
}

// newStateFS returns a FileSystem on the state directory root, closed when
// the test ends.
func newStateFS(t *testing.T, root string, o Opener, opts ...Option) *FileSystem {
	t.Helper()
	f, err := New(root, o, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return f
}

// A layer mounted once is mounted again by another FileSystem on the same
// state - the next data plane after a restart, or after a reboot - with
// the registry down: its TOC comes from disk, what the cache holds reads,
// what it does not fails with EIO. Unmount drops the stored TOC. The TOC
// of the full layer is larger than a 4 KiB tail, so that the part fetched
// before the tail is stored too.
func TestRemountWithoutRegistry(t *testing.T) {
	for _, tail := range []int64{DefaultTailSize, 4096} {
		t.Run(fmt.Sprintf("tail-%d", tail), func(t *testing.T) {
			l := fullLayer(t)
			o := &sizedOpener{testOpener: newOpener(l)}
			state, cache := filepath.Join(t.TempDir(), "state"), newMapCache()
			opts := []Option{WithCache(cache), WithTailSize(tail), WithBackgroundFetch(false), WithPassthrough(false)}
			ctx := context.Background()

			f1 := newStateFS(t, state, o, opts...)
			mp := mountLayer(t, f1, l)
			checkContent(t, filepath.Join(mp, "a/small"), randomBytes(1, 4096))
			if err := f1.Close(); err != nil {
				t.Fatal(err)
			}

			o.setDown(true)
			f2 := newStateFS(t, state, o, opts...)
			mp2 := mountpoint(t)
			if err := f2.Mount(ctx, mp2, l.labels()); err != nil {
				t.Fatalf("Mount with the registry down: %v", err)
			}
			if n := o.opensOf(l.dgst); n != 1 {
				t.Errorf("%d Opens of the layer, want 1 (the first mount's)", n)
			}
			checkContent(t, filepath.Join(mp2, "a/small"), randomBytes(1, 4096))
			if _, err := os.ReadFile(filepath.Join(mp2, "big")); err == nil {
				t.Error("a file neither cached nor reachable was read")
			}
			o.setDown(false)
			checkContent(t, filepath.Join(mp2, "a/text"), []byte("hello, lazy world\n"))

			stored, err := f2.tocs.path(l.dgst)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(stored); err != nil {
				t.Fatalf("no stored TOC while mounted: %v", err)
			}
			if err := f2.Unmount(ctx, mp2); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(stored); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("stored TOC left after Unmount: %v", err)
			}
		})
	}
}

// A stored TOC is checked like a fetched one: one that does not match the
// labels' TOC digest (another layer's, here) is dropped and the TOC fetched
// again; an unreadable one too.
func TestStoredTOCVerified(t *testing.T) {
	l, other := fullLayer(t), buildLayer(t, []tarEntry{file("other", 0o644, []byte("other"))})
	o := &sizedOpener{testOpener: newOpener(l, other)}
	state := filepath.Join(t.TempDir(), "state")
	f := newStateFS(t, state, o, WithBackgroundFetch(false))
	ctx := context.Background()

	mountLayer(t, f, other)
	size, tail, err := f.tocs.load(other.dgst)
	if err != nil {
		t.Fatal(err)
	}
	// l's stored TOC is other's, and its blob opens as other's: it
	// parses, but its digest is not the one l's labels name.
	if err := f.tocs.save(l.dgst, size, tail); err != nil {
		t.Fatal(err)
	}
	o.sizedAs = map[digest.Digest]digest.Digest{l.dgst: other.dgst}
	if err := os.WriteFile(filepath.Join(f.tocs.dir, "sha256", other.dgst.Encoded()), []byte("garbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	f2 := newStateFS(t, state, o, WithBackgroundFetch(false))
	mp := mountpoint(t)
	if err := f2.Mount(ctx, mp, l.labels()); err != nil {
		t.Fatalf("Mount over a wrong stored TOC: %v", err)
	}
	checkContent(t, filepath.Join(mp, "a/text"), []byte("hello, lazy world\n"))
	if n := o.opensOf(l.dgst); n != 1 {
		t.Errorf("%d Opens of the layer, want 1", n)
	}
	if _, got, err := f2.tocs.load(l.dgst); err != nil || len(got) == len(tail) {
		t.Errorf("stored TOC of the layer not replaced by its own: %d bytes, %v", len(got), err)
	}
	mp2 := mountpoint(t)
	if err := f2.Mount(ctx, mp2, other.labels()); err != nil {
		t.Fatalf("Mount over a garbled stored TOC: %v", err)
	}
	if n := o.opensOf(other.dgst); n != 2 {
		t.Errorf("%d Opens of the other layer, want 2", n)
	}
}
