package main

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/fs"
	"github.com/lazypull/lazypull/profile"
)

// The profiler sees the layer filesystem as one of its prefetch policies
// (fs.Policy): told of each mount, it replays the image's profile on the
// layer, keeps the layer's view for the profiles of images that share it,
// and, while an image of the layer is being recorded, passes the layer's
// read events to the recorder.

// profileWave bounds, in bytes of content, the chunks of a layer's part of
// a profile fetched at once: the chunks a program read first come first,
// and the next wave starts when one is in.
const profileWave = 8 << 20

// options returns the layer filesystem's options that make p see its
// mounts; none for a nil p.
func (p *profiler) options() []fs.Option {
	if p == nil {
		return nil
	}
	return []fs.Option{fs.WithPolicy(profilePolicy{p})}
}

// profilePolicy is the profiler as an fs.Policy.
type profilePolicy struct{ p *profiler }

var _ fs.Policy = profilePolicy{}

func (profilePolicy) Name() string { return "profile" }

// Attach looks the profile of the layer's image up if this is the image's
// first layer mounted, replays the layer's part of it, if known, and
// returns what records the layer's reads.
func (pp profilePolicy) Attach(ctx context.Context, l *fs.Layer, labels map[string]string) any {
	p := pp.p
	if !p.layers.add(l) {
		return nil // being unmounted
	}
	p.mounting(ctx, labels)
	if md, err := digest.Parse(labels[fs.LabelManifestDigest]); err == nil {
		p.mu.Lock()
		im := p.images[md]
		p.mu.Unlock()
		if im != nil {
			p.replay(ctx, md, im, im.replay.Mounted(l.Digest()))
		}
	}
	if !p.cfg.Record {
		return nil
	}
	return layerRecorder{p.rec}
}

// layerRecorder passes the read events of a layer to the recorder.
type layerRecorder struct{ rec *profile.Recorder }

var _ fs.ReadObserver = layerRecorder{}

// Read records the chunks a reader read, if an image of the layer is being
// recorded. A read that FUSE passthrough serves is told of when the file
// is opened, as a read of all of it (see fs.ReadEvent).
func (r layerRecorder) Read(l *fs.Layer, ev fs.ReadEvent) {
	d := l.Digest()
	if !r.rec.Recording(d) {
		return
	}
	cs, err := l.Chunks(ev.File, ev.Offset, ev.Offset+ev.Size)
	if err != nil {
		return // the read itself reports it
	}
	for _, c := range cs {
		r.rec.Read(d, c.File, c.Offset)
	}
}

// mountedLayers are the views of the layers mounted, by digest, for the
// profiles of images that share a layer with an image mounted before: the
// shared layer is not mounted again. A view is forgotten when its layer is
// unmounted, so that the layer's memory is given back.
type mountedLayers struct {
	mu sync.Mutex
	m  map[digest.Digest][]*fs.Layer
}

// add keeps l until its layer is unmounted; false if it is being
// unmounted already.
func (ls *mountedLayers) add(l *fs.Layer) bool {
	ls.mu.Lock()
	ls.m[l.Digest()] = append(ls.m[l.Digest()], l)
	ls.mu.Unlock()
	if l.Go("profile: forget the layer when unmounted", func(ctx context.Context) { <-ctx.Done(); ls.remove(l) }) {
		return true
	}
	ls.remove(l)
	return false
}

func (ls *mountedLayers) remove(l *fs.Layer) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	d := l.Digest()
	vs := slices.DeleteFunc(ls.m[d], func(v *fs.Layer) bool { return v == l })
	if len(vs) == 0 {
		delete(ls.m, d)
	} else {
		ls.m[d] = vs
	}
}

// get returns a view of mounted layer d, or nil.
func (ls *mountedLayers) get(d digest.Digest) *fs.Layer {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if vs := ls.m[d]; len(vs) > 0 {
		return vs[len(vs)-1]
	}
	return nil
}

// mounted returns those of layers that are mounted.
func (ls *mountedLayers) mounted(layers []digest.Digest) []digest.Digest {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	var out []digest.Digest
	for _, d := range layers {
		if len(ls.m[d]) > 0 {
			out = append(out, d)
		}
	}
	return out
}

// replay fetches cs, the profile's chunks of mounted layers, each layer's
// in the profile's order, in waves of profileWave bytes, in goroutines of
// the layers. It first checks every chunk against its layer's table of
// contents: if one is not a chunk of a regular file there, it fetches
// nothing, stops the image's replay and logs why.
func (p *profiler) replay(ctx context.Context, md digest.Digest, im *imageProfile, cs []profile.Chunk) {
	if len(cs) == 0 {
		return
	}
	type layerPart struct {
		l  *fs.Layer
		cs []fs.Chunk
	}
	var parts []*layerPart
	by := map[digest.Digest]*layerPart{}
	for i, c := range cs {
		part := by[c.Layer]
		if part == nil {
			part = &layerPart{l: p.layers.get(c.Layer)}
			by[c.Layer] = part
			parts = append(parts, part)
		}
		if part.l == nil {
			continue // unmounted meanwhile: nothing to prefetch
		}
		fc, err := profileChunk(part.l, c)
		if err != nil {
			im.replay.Stop()
			log.G(ctx).WithError(err).WithFields(log.Fields{"manifest": md, "layer": c.Layer, "chunk": i}).
				Warn("ignoring the start-up profile: it does not fit the image's layers")
			return
		}
		part.cs = append(part.cs, fc)
	}
	for _, part := range parts {
		if part.l == nil || len(part.cs) == 0 {
			continue
		}
		lg := log.G(ctx).WithFields(log.Fields{"manifest": md, "layer": part.l.Digest(), "chunks": len(part.cs)})
		l, pcs := part.l, part.cs
		if l.Go("profile replay", func(lctx context.Context) { replayWaves(lctx, l, pcs) }) {
			lg.Debug("prefetching the start-up profile")
		}
	}
}

// replayWaves fetches cs in waves, the first chunks first. A wave is
// waited for by reading a byte of each of its chunks, which waits for the
// chunk's fetch (or fetches it again if that failed).
func replayWaves(ctx context.Context, l *fs.Layer, cs []fs.Chunk) {
	var b [1]byte
	for len(cs) > 0 && ctx.Err() == nil {
		n, size := 0, int64(0)
		for n < len(cs) && (n == 0 || size < profileWave) {
			size += cs[n].Size
			n++
		}
		wave := cs[:n]
		cs = cs[n:]
		l.Fetch(fs.Soon, wave...)
		for _, c := range wave {
			if _, err := l.ReadAt(ctx, c.File, b[:], c.Offset); err != nil && ctx.Err() == nil {
				log.G(ctx).WithError(err).WithFields(log.Fields{"layer": l.Digest(), "file": c.File}).Debug("start-up profile: prefetch failed")
			}
		}
	}
}

// profileChunk returns the chunk c names in l: a profile from a registry
// is as untrusted as the image, and must name where a chunk of a regular
// file of the layer's table of contents starts.
func profileChunk(l *fs.Layer, c profile.Chunk) (fs.Chunk, error) {
	e, ok := l.Lookup(c.Path)
	if !ok || e.Type != "reg" {
		return fs.Chunk{}, fmt.Errorf("no regular file %q: %w", c.Path, errdefs.ErrInvalidArgument)
	}
	if c.Offset < 0 || c.Offset >= e.Size {
		return fs.Chunk{}, fmt.Errorf("file %q: offset %d outside its %d bytes: %w", c.Path, c.Offset, e.Size, errdefs.ErrInvalidArgument)
	}
	cs, err := l.Chunks(c.Path, c.Offset, c.Offset+1)
	if err != nil || len(cs) != 1 || cs[0].Offset != c.Offset {
		return fs.Chunk{}, fmt.Errorf("file %q: no chunk starts at offset %d: %w", c.Path, c.Offset, errdefs.ErrInvalidArgument)
	}
	return cs[0], nil
}
