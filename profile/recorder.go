package profile

import (
	"fmt"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
)

// RecorderConfig shapes a Recorder.
type RecorderConfig struct {
	// Window is how long a recording lasts, from the first read of the
	// image's layers.
	Window time.Duration
	// Idle closes a recording early when no new chunk was read for that
	// long: the program started and waits.
	Idle time.Duration
	// Start drops a recording that saw no read for that long after Begin:
	// the image was pulled, not run.
	Start time.Duration
	// Limits bound a recording's reads (Entries); a recording that
	// reaches them ends.
	Limits Limits
	// MaxSessions bounds the images recorded at once; Begin refuses more.
	MaxSessions int
}

// Recorder records, per image being started, the chunks its layers are
// read at, each once, in the order first read. It is safe for concurrent
// use; Read is cheap enough for every read of a FUSE filesystem. It starts
// no goroutine: Expire, called as its owner sees fit, ends the recordings
// whose time is up, by the clock it was given.
type Recorder struct {
	cfg RecorderConfig
	now func() time.Time

	mu       sync.Mutex
	sessions map[string]*session          // by Key
	byLayer  map[digest.Digest][]*session // the recordings a layer is read for
}

// session is the recording of one image.
type session struct {
	rec    Record
	key    string
	index  map[digest.Digest]int // layer -> index in Layers
	begun  time.Time
	first  time.Time // of the first read; zero before
	last   time.Time // when the last new chunk was read
	seen   map[Read]struct{}
	closed bool // full: ends at the next Expire
}

// NewRecorder returns a Recorder shaped by cfg, reading the time from now.
func NewRecorder(cfg RecorderConfig, now func() time.Time) (*Recorder, error) {
	if err := cfg.Limits.check(); err != nil {
		return nil, err
	}
	if cfg.Window <= 0 || cfg.MaxSessions <= 0 || cfg.Idle <= 0 || cfg.Start <= 0 {
		return nil, fmt.Errorf("recorder: window, idle, start and max sessions must be positive: %w", errdefs.ErrInvalidArgument)
	}
	if now == nil {
		now = time.Now
	}
	return &Recorder{cfg: cfg, now: now, sessions: map[string]*session{}, byLayer: map[digest.Digest][]*session{}}, nil
}

// Begin starts recording the image of layers (bottom first), pulled as ref
// with manifest, unless it is being recorded already or MaxSessions are.
// It reports whether it started a recording.
func (r *Recorder) Begin(ref string, manifest digest.Digest, layers []digest.Digest) bool {
	if len(layers) == 0 || len(layers) > MaxLayers {
		return false
	}
	key := Key(layers)
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.sessions[key]; ok || len(r.sessions) >= r.cfg.MaxSessions {
		return false
	}
	s := &session{
		rec: Record{Origin: Recorded, Ref: ref, Manifest: manifest,
			Profile: &Profile{Version: Version, Layers: append([]digest.Digest(nil), layers...)}},
		key: key, index: make(map[digest.Digest]int, len(layers)), begun: r.now(), seen: map[Read]struct{}{},
	}
	for i, d := range layers {
		if _, dup := s.index[d]; !dup {
			s.index[d] = i
			r.byLayer[d] = append(r.byLayer[d], s)
		}
	}
	r.sessions[key] = s
	return true
}

// Recording reports whether some image of layer is being recorded.
func (r *Recorder) Recording(layer digest.Digest) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.byLayer[layer]) > 0
}

// Read records that the chunk at offset of file path of layer was read,
// for every image of layer being recorded: a layer several images share
// counts its reads for each.
func (r *Recorder) Read(layer digest.Digest, path string, offset int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ss := r.byLayer[layer]
	if len(ss) == 0 || offset < 0 || ValidPath(path) != nil {
		return
	}
	now := r.now()
	for _, s := range ss {
		if s.closed {
			continue
		}
		rd := Read{Layer: s.index[layer], Path: path, Offset: offset}
		if _, ok := s.seen[rd]; ok {
			continue
		}
		if s.first.IsZero() {
			s.first = now
		}
		s.seen[rd] = struct{}{}
		s.last = now
		s.rec.Profile.Reads = append(s.rec.Profile.Reads, rd)
		if len(s.rec.Profile.Reads) >= r.cfg.Limits.Entries {
			s.closed = true
		}
	}
}

// Expire ends the recordings whose time is up and returns them: those
// that reached Window from their first read, were Idle or are full.
// Recordings without any read Start after Begin are dropped.
func (r *Recorder) Expire() []*Record {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	var done []*Record
	for key, s := range r.sessions {
		var end, keep bool
		switch {
		case s.closed:
			end, keep = true, true
		case s.first.IsZero():
			end = !now.Before(s.begun.Add(r.cfg.Start))
		default:
			end = !now.Before(s.first.Add(r.cfg.Window)) || !now.Before(s.last.Add(r.cfg.Idle))
			keep = true
		}
		if !end {
			continue
		}
		r.dropLocked(key, s)
		if keep {
			s.rec.Created = now
			done = append(done, &s.rec)
		}
	}
	return done
}

// Cancel drops the recording of the image of layers, if any.
func (r *Recorder) Cancel(layers []digest.Digest) {
	key := Key(layers)
	r.mu.Lock()
	defer r.mu.Unlock()
	if s, ok := r.sessions[key]; ok {
		r.dropLocked(key, s)
	}
}

func (r *Recorder) dropLocked(key string, s *session) {
	delete(r.sessions, key)
	for d := range s.index {
		ss := r.byLayer[d]
		for i, o := range ss {
			if o == s {
				ss = append(ss[:i], ss[i+1:]...)
				break
			}
		}
		if len(ss) == 0 {
			delete(r.byLayer, d)
		} else {
			r.byLayer[d] = ss
		}
	}
}
