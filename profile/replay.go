package profile

import (
	"sync"

	digest "github.com/opencontainers/go-digest"
)

// Chunk is a chunk of a layer to prefetch.
type Chunk struct {
	Layer  digest.Digest
	Path   string
	Offset int64
}

// Replay applies one profile to an image being mounted: it hands out the
// chunks of each layer once both the profile and the layer's mount are
// there, in the profile's order. It is safe for concurrent use.
type Replay struct {
	mu      sync.Mutex
	p       *Profile
	mounted map[digest.Digest]bool
	issued  map[digest.Digest]bool
	stopped bool
}

// NewReplay returns a Replay waiting for its profile and its layers.
func NewReplay() *Replay {
	return &Replay{mounted: map[digest.Digest]bool{}, issued: map[digest.Digest]bool{}}
}

// Mounted records that layers are mounted and returns what to prefetch
// now. A layer the image shares with an image mounted before is not
// mounted again: its owner tells of it as mounted all the same.
func (r *Replay) Mounted(layers ...digest.Digest) []Chunk {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, d := range layers {
		r.mounted[d] = true
	}
	return r.dueLocked()
}

// SetProfile gives the Replay its profile and returns what to prefetch
// now. Only the first profile counts.
func (r *Replay) SetProfile(p *Profile) []Chunk {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.p == nil {
		r.p = p
	}
	return r.dueLocked()
}

// Stop ends the Replay: nothing more is handed out (the profile turned out
// bad, or the image went away).
func (r *Replay) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped = true
}

// Stopped reports whether Stop was called.
func (r *Replay) Stopped() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stopped
}

// Pending reports whether layers of the profile are still to be mounted
// (or the profile still to come).
func (r *Replay) Pending() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return false
	}
	if r.p == nil {
		return true
	}
	for _, d := range r.p.Layers {
		if !r.issued[d] {
			return true
		}
	}
	return false
}

// dueLocked returns the chunks, in the profile's order, of the layers
// mounted and not handed out yet, and marks those layers handed out.
func (r *Replay) dueLocked() []Chunk {
	if r.p == nil || r.stopped {
		return nil
	}
	now := map[int]bool{}
	for i, d := range r.p.Layers {
		if r.mounted[d] && !r.issued[d] {
			now[i] = true
		}
	}
	var cs []Chunk
	for _, rd := range r.p.Reads {
		if now[rd.Layer] {
			cs = append(cs, Chunk{Layer: r.p.Layers[rd.Layer], Path: rd.Path, Offset: rd.Offset})
		}
	}
	for i := range now {
		r.issued[r.p.Layers[i]] = true
	}
	return cs
}
