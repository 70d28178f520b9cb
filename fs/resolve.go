package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sync/semaphore"
)

// source is a resolved layer: its blob opened and its TOC parsed, but not
// necessarily verified; verification needs the TOC digest from the layer's
// own Mount labels.
type source struct {
	dgst digest.Digest
	blob Blob
	// progress is blob if it tells how much of a read arrived.
	progress ProgressBlob
	r        *estargz.Reader
	// tocSize is the size of the TOC's JSON, which bounds the memory the
	// source holds; resolved is when it was resolved.
	tocSize  int64
	resolved time.Time
	// payloadEnd is where the TOC starts: no chunk extends past it.
	payloadEnd int64
	index
	chunks *chunkTable

	// stored is set when the TOC came from the FileSystem's tocStore.
	stored bool
	// tocTail is the blob from payloadEnd to its end, kept until the
	// first Mount stores it (storeTOC).
	tocTail   []byte
	storeOnce sync.Once

	// entries are the TOC's, in its order, for verification.
	entries []*estargz.TOCEntry
	check   atomic.Pointer[blobCheck] // set once verification is wanted
}

// index gives every entry of the tree a stable inode number: its position in
// a depth-first walk of the TOC's tree with children in name order. It
// depends on nothing but the TOC, so it is the same on every mount of the
// layer and in every process serving it. Hardlinks resolve to one entry and
// so share a number.
type index struct {
	ino   map[*estargz.TOCEntry]uint64
	bytes int64 // sum of regular file sizes
}

// resolve returns the source of dgst, opening it if no one has. Concurrent
// calls for one layer share one resolution, which runs in the FileSystem's
// lifetime so that a cancelled caller does not fail the others.
func (f *FileSystem) resolve(ctx context.Context, ref string, dgst digest.Digest) (*source, error) {
	f.mu.Lock()
	src := f.resolved[dgst]
	f.mu.Unlock()
	if src != nil {
		return src, nil
	}
	ch := f.resolving.DoChan(dgst.String(), func() (v any, err error) {
		// singleflight re-panics in a goroutine of its own, which no one
		// could recover.
		defer f.recovered(log.WithLogger(f.life, log.G(ctx).WithField("layer", dgst)), "resolution", func(perr error) {
			v, err = nil, fmt.Errorf("layer %s: %w", dgst, perr)
		})
		s, err := f.open(f.life, ref, dgst)
		if err != nil {
			return nil, err
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.closed {
			return nil, fmt.Errorf("fs closed: %w", errdefs.ErrUnavailable)
		}
		f.resolved[dgst] = s
		return s, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*source), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("layer %s: %w", dgst, ctx.Err())
	}
}

// resolveImage starts resolving, in the background, the layers listed in
// the image-layers label other than self, so that their Mounts find them ready.
func (f *FileSystem) resolveImage(ctx context.Context, ref string, self digest.Digest, layers string) {
	for _, s := range strings.Split(layers, ",") {
		dgst, err := digest.Parse(strings.TrimSpace(s))
		if err != nil || dgst == self {
			continue
		}
		f.mu.Lock()
		_, done := f.resolved[dgst]
		_, queued := f.pending[dgst]
		if f.closed || done || queued || !f.roomAheadLocked() {
			f.mu.Unlock()
			continue
		}
		f.pending[dgst] = struct{}{}
		f.mu.Unlock()
		lctx := log.WithLogger(f.life, log.G(ctx))
		if !f.work.spawn("background resolution", func() { f.resolveBackground(lctx, ref, dgst) }) {
			f.mu.Lock()
			delete(f.pending, dgst)
			f.mu.Unlock()
		}
	}
}

func (f *FileSystem) resolveBackground(ctx context.Context, ref string, dgst digest.Digest) {
	defer func() {
		f.mu.Lock()
		delete(f.pending, dgst)
		f.mu.Unlock()
	}()
	select {
	case f.sem <- struct{}{}:
		defer func() { <-f.sem }()
	case <-ctx.Done():
		return
	}
	if _, err := f.resolve(ctx, ref, dgst); err != nil {
		if ctx.Err() == nil {
			log.G(ctx).WithError(err).WithField("layer", dgst).Warn("background resolution failed")
		}
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.mountedLocked(dgst) && f.aheadLocked() > f.aheadCap() {
		delete(f.resolved, dgst)
		log.G(ctx).WithField("layer", dgst).Debug("resolution dropped: too many layers resolved ahead of their mount")
	}
}

// Layers resolved ahead of their mount are held until they are mounted,
// which a pull that fails half way, or an image's label listing layers it
// never unpacks, puts off for ever: their TOCs, all together, are held to
// at most twice the largest a layer may have (aheadCap, in bytes of JSON),
// and beyond it resolving ahead waits for one resolved more than aheadTTL
// ago to be dropped, or for a mount.
const aheadTTL = 10 * time.Minute

func (f *FileSystem) aheadCap() int64 { return 2 * f.cfg.limits.TOCSize }

// aheadLocked returns the JSON bytes of the TOCs of the layers resolved
// but not mounted.
func (f *FileSystem) aheadLocked() int64 {
	var n int64
	for d, s := range f.resolved {
		if !f.mountedLocked(d) {
			n += s.tocSize
		}
	}
	return n
}

// roomAheadLocked reports whether a layer may be resolved ahead of its
// mount, dropping those resolved ahead too long ago if there is no room.
func (f *FileSystem) roomAheadLocked() bool {
	if f.aheadLocked() < f.aheadCap() {
		return true
	}
	for d, s := range f.resolved {
		if !f.mountedLocked(d) && time.Since(s.resolved) > aheadTTL {
			delete(f.resolved, d)
		}
	}
	return f.aheadLocked() < f.aheadCap()
}

func (f *FileSystem) mountedLocked(dgst digest.Digest) bool {
	for _, m := range f.mounts {
		if m.layer != nil && m.layer.src.dgst == dgst {
			return true
		}
	}
	return false
}

// open parses the TOC stored for dgst, or else fetches the blob's tail and
// parses the TOC.
func (f *FileSystem) open(ctx context.Context, ref string, dgst digest.Digest) (*source, error) {
	began := time.Now()
	if src, ok := f.openStored(ctx, ref, dgst); ok {
		log.G(ctx).WithFields(log.Fields{
			"layer": dgst, "parse": time.Since(began), "entries": len(src.ino),
		}).Debug("layer resolved from its stored TOC")
		return src, nil
	}
	blob, tail, err := f.opener.Open(ctx, ref, dgst, f.cfg.tailSize)
	fetched := time.Now()
	if err != nil {
		return nil, fmt.Errorf("layer %s: open blob: %w", dgst, err)
	}
	src, err := parse(ctx, dgst, blob, tail, f.cfg.limits, f.parsing)
	if err != nil {
		return nil, err
	}
	log.G(ctx).WithFields(log.Fields{
		"layer": dgst, "fetch": fetched.Sub(began), "parse": time.Since(fetched), "entries": len(src.ino),
	}).Debug("layer resolved")
	return src, nil
}

// parse reads the TOC of blob, whose last bytes are tail, checks it
// against lim and indexes it. A TOC that fails a check is an error of class
// InvalidArgument that says why. The TOC's JSON is inflated and decoded
// once budget, if not nil, has room for it.
func parse(ctx context.Context, dgst digest.Digest, blob Blob, tail []byte, lim Limits, budget *semaphore.Weighted) (*source, error) {
	size := blob.Size()
	if int64(len(tail)) > size {
		return nil, fmt.Errorf("layer %s: tail of %d bytes exceeds blob size %d: %w", dgst, len(tail), size, errdefs.ErrInvalidArgument)
	}
	tr := &tailReader{ctx: ctx, blob: blob, tail: tail, off: size - int64(len(tail))}
	defer tr.drop()
	var tocSize int64
	admit := func(n int64) (func(), error) {
		tocSize = n
		if budget == nil {
			return func() {}, nil
		}
		if err := budget.Acquire(ctx, n); err != nil {
			return nil, err
		}
		return func() { budget.Release(n) }, nil
	}
	r, entries, tocOff, err := openTOC(io.NewSectionReader(tr, 0, size), lim, admit)
	var refused *refusal
	switch {
	case errors.As(err, &refused):
		return nil, fmt.Errorf("layer %s: TOC refused: %v: %w", dgst, err, errdefs.ErrInvalidArgument)
	case err != nil:
		if fetchErr := tr.fetchErr(); fetchErr != nil {
			return nil, fmt.Errorf("layer %s: read TOC: %w", dgst, fetchErr)
		}
		return nil, fmt.Errorf("not an eStargz blob: layer %s: %v: %w", dgst, err, errdefs.ErrNotImplemented)
	}
	progress, _ := blob.(ProgressBlob)
	src := &source{dgst: dgst, blob: blob, progress: progress, r: r, payloadEnd: tocOff, tocTail: tr.from(tocOff), tocSize: tocSize, resolved: time.Now()}
	if err := src.buildIndex(len(entries)); err != nil {
		return nil, fmt.Errorf("layer %s: %v: %w", dgst, err, errdefs.ErrNotImplemented)
	}
	if err := src.buildChunks(entries, lim); err != nil {
		return nil, fmt.Errorf("layer %s: TOC refused: %v: %w", dgst, err, errdefs.ErrInvalidArgument)
	}
	src.entries = entries
	return src, nil
}

// buildIndex numbers the entries of the tree; n, the number of entries of
// the TOC, is about as many.
func (s *source) buildIndex(n int) error {
	root, ok := s.r.Lookup("")
	if !ok {
		return errors.New("TOC has no root directory")
	}
	s.ino = make(map[*estargz.TOCEntry]uint64, n)
	s.ino[root] = 1
	stack := []*estargz.TOCEntry{root}
	var names []string
	for len(stack) > 0 {
		dir := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		names = names[:0]
		dir.ForeachChild(func(name string, _ *estargz.TOCEntry) bool {
			names = append(names, name)
			return true
		})
		slices.Sort(names)
		// Pushed in reverse so that the walk visits names in order.
		for i := len(names) - 1; i >= 0; i-- {
			e, _ := dir.LookupChild(names[i])
			if _, seen := s.ino[e]; seen {
				continue
			}
			s.ino[e] = uint64(len(s.ino) + 1)
			if e.Type == "reg" {
				s.bytes += e.Size
			}
			if e.Type == "dir" {
				stack = append(stack, e)
			}
		}
	}
	return nil
}

// tailReader serves openTOC from the tail fetched with the blob and
// fetches what lies before it, which for a TOC larger than the tail is one
// read.
type tailReader struct {
	ctx  context.Context // the resolution's; only used while resolving
	blob Blob
	off  int64 // blob offset of tail[0]

	mu   sync.Mutex
	tail []byte
	err  error
	// head is what was fetched before tail, when it ends where tail starts.
	head []byte
}

func (t *tailReader) ReadAt(p []byte, off int64) (int, error) {
	t.mu.Lock()
	tail := t.tail
	t.mu.Unlock()
	if tail == nil {
		return 0, errors.New("tail reader used after resolution")
	}
	if off < 0 || off+int64(len(p)) > t.off+int64(len(tail)) {
		return 0, io.EOF
	}
	n := 0
	if off < t.off {
		head := p[:min(int64(len(p)), t.off-off)]
		if _, err := t.blob.ReadAt(t.ctx, head, off); err != nil {
			t.mu.Lock()
			t.err = err
			t.mu.Unlock()
			return 0, err
		}
		if off+int64(len(head)) == t.off {
			t.mu.Lock()
			t.head = append([]byte(nil), head...)
			t.mu.Unlock()
		}
		n = len(head)
	}
	n += copy(p[n:], tail[off+int64(n)-t.off:])
	return n, nil
}

func (t *tailReader) fetchErr() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.err
}

// from returns a copy of the blob's bytes from off to its end, if the
// tail and the head fetched before it hold them all, else nil.
func (t *tailReader) from(off int64) []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case t.tail == nil:
		return nil
	case off >= t.off:
		return append([]byte(nil), t.tail[off-t.off:]...)
	case off == t.off-int64(len(t.head)):
		return append(append(make([]byte, 0, len(t.head)+len(t.tail)), t.head...), t.tail...)
	}
	return nil
}

// drop releases the tail once the TOC is read: content is read through the
// layer's own fetch path.
func (t *tailReader) drop() {
	t.mu.Lock()
	t.tail = nil
	t.mu.Unlock()
}
