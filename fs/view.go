package fs

import (
	"context"
	"fmt"
	"io"

	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

// Layer is a mounted layer as policies see it: its files and their chunks,
// what is cached, and fetches with a priority. It is safe for concurrent
// use; its methods do nothing useful once the layer is unmounted.
type Layer struct {
	l *layer
}

// Chunk is a piece of a file's content, fetched, verified and cached as one.
type Chunk struct {
	// File is the file's name in the layer; Offset and Size where the
	// chunk lies in it.
	File         string
	Offset, Size int64
	c            chunk
}

// Priority says who waits for a fetch.
type Priority int

const (
	// Soon is for chunks a reader is likely to read at once (read-ahead,
	// prefetch of files a starting program opens): the fetch counts as
	// demand, so that background fetch yields to it, and the chunks are
	// kept in memory too.
	Soon Priority = iota
	// Later is for chunks no reader waits for (background fetch).
	Later
)

// Digest is the layer's blob digest.
func (v *Layer) Digest() digest.Digest { return v.l.src.dgst }

// Lookup returns the entry of name in the layer's TOC.
func (v *Layer) Lookup(name string) (*estargz.TOCEntry, bool) { return v.l.src.r.Lookup(name) }

// Chunks returns the chunks of file name covering [off, end) of it.
func (v *Layer) Chunks(name string, off, end int64) ([]Chunk, error) {
	e, ok := v.l.src.r.Lookup(name)
	if !ok || e.Type != "reg" {
		return nil, fmt.Errorf("layer %s: no file %q: %w", v.l.src.dgst, name, errdefs.ErrNotFound)
	}
	cs, err := v.l.chunks(e, off, min(end, e.Size))
	if err != nil {
		return nil, err
	}
	out := make([]Chunk, len(cs))
	for i, c := range cs {
		out[i] = Chunk{File: e.Name, Offset: c.off, Size: c.size, c: c}
	}
	return out, nil
}

// Fetch starts fetching those of cs that are neither cached nor being
// fetched, in the background; they are claimed before it returns, so that
// a reader of one of them waits for this fetch instead of fetching it again.
func (v *Layer) Fetch(pri Priority, cs ...Chunk) {
	in := make([]chunk, len(cs))
	for i, c := range cs {
		in[i] = c.c
	}
	v.fetch(sortChunks(in), pri)
}

// Cached reports whether chunk c is local: in memory or in the Cache.
func (v *Layer) Cached(ctx context.Context, c Chunk) bool {
	_, ok := v.l.probe(ctx, c.c, false, nil)
	return ok
}

// ReadAt reads file name at off into p, fetching what is not cached, for a
// policy: the policies do not see it as a reader's read. It returns io.EOF
// when it reads less than len(p).
func (v *Layer) ReadAt(ctx context.Context, name string, p []byte, off int64) (int, error) {
	e, ok := v.l.src.r.Lookup(name)
	if !ok || e.Type != "reg" {
		return 0, fmt.Errorf("layer %s: no file %q: %w", v.l.src.dgst, name, errdefs.ErrNotFound)
	}
	return (&fileReader{ctx: ctx, l: v.l, e: e}).ReadAt(p, off)
}

// Go runs fn in a goroutine that the layer owns: unmounting the layer
// cancels ctx and waits for fn to return. It returns false, and does not
// run fn, once the layer is being unmounted.
func (v *Layer) Go(what string, fn func(ctx context.Context)) bool {
	return v.l.work.spawn(what, func() { fn(v.l.ctx) })
}

// Announce tells the layer's policies that the head of file name, its first
// bytes, arrived, as a reader's read of it would: a policy that loads a
// program ahead of its reader (the entrypoint) has the others prefetch
// what it needs in turn.
func (v *Layer) Announce(name string, head []byte) {
	for _, o := range v.l.policies.Load().heads {
		o.HeadArrived(v, name, head)
	}
}

// Local tells the layer that a policy made every chunk local (or tried to):
// what waits for the layer to be local (background verification) goes on.
func (v *Layer) Local() { v.l.whenLocal() }

// table returns every chunk of the layer's files, in blob order.
func (v *Layer) table() []chunk { return v.l.src.chunks.cs }

// fileChunks returns the chunks of e covering [off, end).
func (v *Layer) fileChunks(e *estargz.TOCEntry, off, end int64) ([]chunk, error) {
	return v.l.chunks(e, off, end)
}

// fetch is Fetch on chunks in blob order.
func (v *Layer) fetch(cs []chunk, pri Priority) {
	v.l.startFetch(cs, pri)
}

// fetchNow fetches those of cs (in blob order) that are neither cached nor
// being fetched, and returns when it has.
func (v *Layer) fetchNow(ctx context.Context, cs []chunk, pri Priority) {
	v.l.fetchAhead(ctx, cs, pri == Soon)
}

// local reports whether chunk c is known to be local without looking.
func (v *Layer) local(c chunk) bool { return v.l.src.chunks.isLocal(c.idx) }

// state returns how much of the layer is local.
func (v *Layer) state() (chunks, local int, localBytes int64, full bool) {
	n, l, b, at := v.l.src.chunks.state()
	return n, l, b, !at.IsZero()
}

// image returns the mounted layers of the layer's image, top first.
func (v *Layer) image() image { return v.l.fsys.stack(v.l) }

// demand is the FileSystem's account of fetches readers wait for.
func (v *Layer) demand() *demand { return v.l.fsys.demand }

// ctx is the layer's lifetime.
func (v *Layer) ctx() context.Context { return v.l.ctx }

// fileReader reads a file of a layer for lazypull itself: the policies,
// which learn from readers, do not see its reads.
type fileReader struct {
	ctx context.Context
	l   *layer
	e   *estargz.TOCEntry
}

var _ io.ReaderAt = (*fileReader)(nil)

func (r *fileReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := r.l.read(r.ctx, r.e, p, off, false)
	if err == nil && n < len(p) {
		err = io.EOF
	}
	return n, err
}

// fetchFile starts fetching file e as readers would: whole, or its first
// and last chunks, where a program's headers and data lie, when it is
// larger than maxLoaderWhole compressed.
func (v *Layer) fetchFile(e *estargz.TOCEntry) {
	if e.Size <= 0 {
		return
	}
	cs, err := v.l.chunks(e, 0, e.Size)
	if err != nil || len(cs) == 0 {
		return
	}
	if cs[len(cs)-1].end-cs[0].start > maxLoaderWhole {
		cs = []chunk{cs[0], cs[len(cs)-1]}
	}
	v.fetch(cs, Soon)
}

// dirChunks returns, in blob order, the chunks of the regular files of
// directory d other than except, if they are at most limit compressed
// bytes all together; else none.
func (v *Layer) dirChunks(d *estargz.TOCEntry, except string, limit int64) []chunk {
	var cs []chunk
	var size int64
	d.ForeachChild(func(_ string, e *estargz.TOCEntry) bool {
		if e.Type != "reg" || e.Size <= 0 || e.Name == except {
			return true
		}
		fcs, err := v.l.chunks(e, 0, e.Size)
		if err != nil {
			return true // its own reads will report it
		}
		for _, c := range fcs {
			size += c.end - c.start
		}
		cs = append(cs, fcs...)
		return size <= limit
	})
	if size > limit {
		return nil
	}
	return sortChunks(cs)
}

// cacheable reports whether the layer's chunks can be verified and kept
// in a Cache.
func (v *Layer) cacheable() bool { return v.l.fsys.caps.cache != nil && v.l.verifier != nil }

// idle waits until readers leave the link idle, holding one of the
// FileSystem's idle request slots until the returned function is called;
// false when ctx ends first.
func (v *Layer) idle(ctx context.Context) (func(), bool) { return v.l.fsys.idle.acquire(ctx) }
