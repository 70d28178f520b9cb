package fs

import (
	"context"
	"sync"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
)

// The FileSystem is two halves. The core serves reads: the chunk table,
// fetches shared by everyone who wants a chunk, verification, the memory
// and disk caches, passthrough (fetch.go, probe.go, chunks.go, node.go,
// passthrough.go). Policies decide what to fetch before a reader asks for
// it, which is where a lazy pull's speed comes from: each is one type in a
// file of its own, with its own state, lock and option, and policies.go
// lists them. A policy sees a mounted layer through a Layer (view.go) and
// reacts to the events below.
//
// A Policy is told of each mount with Attach, and returns what it keeps of
// the layer: nil if nothing, else a value that receives the layer's events
// of the interfaces it implements (ReadObserver, HeadObserver); which ones
// is found once, at Attach. Events are delivered synchronously on the path
// that caused them (a FUSE read, a Mount): a policy returns at once and
// does long work in a goroutine of the layer's (Layer.Go), which the
// layer's unmount stops.

// Policy decides what to fetch ahead of readers.
type Policy interface {
	// Name names the policy in logs.
	Name() string
	// Attach is called when layer l is mounted, before it is served, with
	// the context of the Mount and the labels of its snapshot. It may start
	// fetches (l.Fetch) and goroutines (l.Go). It returns the policy's
	// state of l, which receives l's events, or nil.
	Attach(ctx context.Context, l *Layer, labels map[string]string) any
}

// ReadEvent is a read of a layer's file by a reader of the mount. A file
// that FUSE passthrough may serve (its content verified in a FileCache) is
// read by the kernel without asking the FileSystem: its open is told of as
// a read of the whole file that hit, once per open that passthrough serves
// (the first while no other is open; later ones share its backing file).
type ReadEvent struct {
	// File is the file's name in the layer; Offset and Size the bytes read.
	File         string
	Offset, Size int64
	// Hit is true when the read fetched nothing itself: every chunk was
	// in memory or in the Cache, or being fetched already.
	Hit bool
	// chunks are those of the read, missed those of them it fetches.
	chunks, missed []chunk
}

// ReadObserver is told of every read of a reader of the mount, before a
// read that missed fetches: fetches a policy starts then travel with the
// read's own.
type ReadObserver interface {
	Read(l *Layer, ev ReadEvent)
}

// observeOpen tells the policies of an open of e that passthrough may
// serve: see ReadEvent.
func (l *layer) observeOpen(e *estargz.TOCEntry) {
	cs, err := l.chunks(e, 0, e.Size)
	if err != nil {
		return
	}
	l.observe(&ReadEvent{File: e.Name, Size: e.Size, Hit: true, chunks: cs})
}

// HeadObserver is told when the head of a file (its first chunk) arrived:
// a reader's read fetched it, or a policy announced it (Layer.Announce).
type HeadObserver interface {
	HeadArrived(l *Layer, file string, head []byte)
}

// fetchesAll is implemented by the state of a policy that makes the whole
// layer local (background fetch) and calls Layer.Local when it did: then
// the core's background verification waits for it.
type fetchesAll interface {
	fetchesAll() bool
}

// attached is what the policies keep of one layer, with the events each
// takes, found once.
type attached struct {
	reads []ReadObserver
	heads []HeadObserver
	// local is true when a policy makes the layer local.
	local bool
}

// attach tells every policy of the mount of l.
func (f *FileSystem) attach(ctx context.Context, l *Layer, labels map[string]string) attached {
	var a attached
	for _, p := range f.policies {
		s := p.Attach(ctx, l, labels)
		if s == nil {
			continue
		}
		if o, ok := s.(ReadObserver); ok {
			a.reads = append(a.reads, o)
		}
		if o, ok := s.(HeadObserver); ok {
			a.heads = append(a.heads, o)
		}
		if o, ok := s.(fetchesAll); ok && o.fetchesAll() {
			a.local = true
		}
	}
	return a
}

// clock is the time of the rules that depend on it (demand, quiet time),
// so that tests can move it.
type clock interface {
	Now() time.Time
	// After is time.After.
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// maxRemembered bounds what a policy's onceSet remembers.
const maxRemembered = 1 << 16

// onceSet remembers keys, so that a policy does a thing once per key. A
// daemon that has met many forgets them all at once: what is prefetched
// again is local by then, and costs nothing.
type onceSet struct {
	mu sync.Mutex
	m  map[string]struct{}
}

// first reports whether key is seen for the first time, and marks it.
func (s *onceSet) first(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[key]; ok {
		return false
	}
	if s.m == nil || len(s.m) >= maxRemembered {
		s.m = map[string]struct{}{}
	}
	s.m[key] = struct{}{}
	return true
}
