package fs

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
)

// Start-up profiles: what readers of an image's layers read as a container
// of it started, recorded on one node and applied on the next cold start
// of the image, on that node or another (the profile package). Two parts
// belong to the FileSystem: telling which chunks readers read
// (ReadChunks, and read events for a ReadObserver), and prefetching the
// chunks of a profile as soon as their layers are mounted
// (PrefetchProfile), as the prefetch of an optimized layer's landmark
// does.

// ProfileChunk is a chunk of a file of a layer, as profiles name it: the
// file's name in the layer's TOC and the chunk's offset in the file.
type ProfileChunk struct {
	Layer  digest.Digest
	Path   string
	Offset int64
}

// profileWave bounds, in compressed bytes, the chunks of a profile fetched
// at once: the first chunks a program read come first, in parallel parts
// within a wave, and the next wave starts when one is in.
const profileWave = 8 << 20

// PrefetchProfile fetches cs, chunks of mounted layers in the order a
// program first read them, ahead of readers, as the prefetch of a layer's
// landmark does: in waves of profileWave bytes, each in blob order and in
// parallel parts. It first checks that every chunk starts at its offset
// of a regular file in the TOC of its layer, which must be mounted, and
// fetches nothing if one does not: the error (InvalidArgument, or
// NotFound for a layer not mounted) names it. The fetches run in the
// background, owned by the first chunk's layer.
func (f *FileSystem) PrefetchProfile(ctx context.Context, cs []ProfileChunk) error {
	if len(cs) == 0 {
		return nil
	}
	layers := f.mountedLayers()
	var first *layer
	resolved := make([]struct {
		l *layer
		c chunk
	}, 0, len(cs))
	for i, pc := range cs {
		l := layers[pc.Layer]
		if l == nil {
			return fmt.Errorf("profile chunk %d: layer %s is not mounted: %w", i, pc.Layer, errdefs.ErrNotFound)
		}
		c, err := l.profileChunk(pc)
		if err != nil {
			return fmt.Errorf("profile chunk %d: layer %s: %w", i, pc.Layer, err)
		}
		if first == nil {
			first = l
		}
		resolved = append(resolved, struct {
			l *layer
			c chunk
		}{l, c})
	}
	lg := log.G(ctx).WithField("chunks", len(cs))
	first.spawn("profile prefetch", func() {
		var wave []struct {
			l *layer
			c chunk
		}
		var size int64
		for _, r := range resolved {
			wave = append(wave, r)
			if size += r.c.end - r.c.start; size >= profileWave {
				prefetchWave(lg, wave)
				wave, size = wave[:0], 0
			}
		}
		prefetchWave(lg, wave)
	})
	return nil
}

// prefetchWave fetches the chunks of one wave, each layer's in blob order,
// the layers in parallel, and returns when they are in.
func prefetchWave(lg *log.Entry, wave []struct {
	l *layer
	c chunk
}) {
	by := map[*layer][]chunk{}
	for _, r := range wave {
		by[r.l] = append(by[r.l], r.c)
	}
	var wg sync.WaitGroup
	for l, cs := range by {
		slices.SortFunc(cs, func(a, b chunk) int { return cmp.Compare(a.idx, b.idx) })
		cs = slices.CompactFunc(cs, func(a, b chunk) bool { return a.idx == b.idx })
		if l.ctx.Err() != nil {
			continue
		}
		wg.Go(l.guard("profile prefetch", func() { l.prefetch(lg.WithField("layer", l.src.dgst), cs) }))
	}
	wg.Wait()
}

// mountedLayers returns the layers mounted, by digest.
func (f *FileSystem) mountedLayers() map[digest.Digest]*layer {
	f.mu.Lock()
	defer f.mu.Unlock()
	ls := make(map[digest.Digest]*layer, len(f.mounts))
	for _, m := range f.mounts {
		if m.layer != nil && m.server != nil {
			ls[m.layer.src.dgst] = m.layer
		}
	}
	return ls
}

// profileChunk returns the chunk pc names in l, checked against the TOC.
func (l *layer) profileChunk(pc ProfileChunk) (chunk, error) {
	e, ok := l.src.r.Lookup(pc.Path)
	if !ok || e.Type != "reg" {
		return chunk{}, fmt.Errorf("no regular file %q: %w", pc.Path, errdefs.ErrInvalidArgument)
	}
	if pc.Offset < 0 || pc.Offset >= e.Size {
		return chunk{}, fmt.Errorf("file %q: offset %d outside its %d bytes: %w", pc.Path, pc.Offset, e.Size, errdefs.ErrInvalidArgument)
	}
	ce, ok := l.src.r.ChunkEntryForOffset(e.Name, pc.Offset)
	if !ok || ce.ChunkOffset != pc.Offset {
		return chunk{}, fmt.Errorf("file %q: no chunk starts at offset %d: %w", pc.Path, pc.Offset, errdefs.ErrInvalidArgument)
	}
	cs, err := l.chunks(e, pc.Offset, pc.Offset+1)
	if err != nil || len(cs) != 1 || cs[0].idx < 0 {
		return chunk{}, fmt.Errorf("file %q: chunk at offset %d not in the layer's table: %w", pc.Path, pc.Offset, errdefs.ErrInvalidArgument)
	}
	return cs[0], nil
}

// ReadChunks returns the chunks of mounted layer dgst that readers of any
// of its mounts asked for, in blob order: a recording of what a container
// read where read events (ReadObserver) are not wired, without the order
// of the reads. A layer shared by images counts the reads of all.
func (f *FileSystem) ReadChunks(dgst digest.Digest) ([]ProfileChunk, error) {
	l := f.mountedLayers()[dgst]
	if l == nil {
		return nil, fmt.Errorf("layer %s is not mounted: %w", dgst, errdefs.ErrNotFound)
	}
	t := l.src.chunks
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []ProfileChunk
	for i, used := range t.used {
		if used {
			out = append(out, ProfileChunk{Layer: dgst, Path: t.cs[i].e.Name, Offset: t.cs[i].off})
		}
	}
	return out, nil
}

// ReadObserver is told of each chunk a reader of a mounted layer reads:
// the layer, the file's name in its TOC and the chunk's offset. It is
// called on the read's path, for every read: it must be quick.
type ReadObserver interface {
	Read(layer digest.Digest, path string, offset int64)
}

// ReadEventsWired says whether layer reads call observeRead, so that a
// ReadObserver set with SetReadObserver is told of reads. It turns true
// with the one-line call in layer.read (for reader reads, beside
// markUsed) that the prefetch policies' restructuring adds; until then,
// recording falls back to ReadChunks.
const ReadEventsWired = false

// readObservers holds the ReadObserver of each FileSystem that has one,
// until the FileSystem's policies carry it.
var readObservers sync.Map // *FileSystem -> ReadObserver

// SetReadObserver makes o be told of every chunk readers read, from now
// on (see ReadEventsWired), until Close or SetReadObserver(nil).
func (f *FileSystem) SetReadObserver(o ReadObserver) {
	if o == nil {
		readObservers.Delete(f)
		return
	}
	readObservers.Store(f, o)
}

// observeRead tells the FileSystem's ReadObserver, if any, of the chunks
// cs a reader read.
func (l *layer) observeRead(cs []chunk) {
	v, ok := readObservers.Load(l.fsys)
	if !ok {
		return
	}
	o := v.(ReadObserver)
	for _, c := range cs {
		o.Read(l.src.dgst, c.e.Name, c.off)
	}
}
