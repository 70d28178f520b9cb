package fs

import (
	"context"
	"sync"
	"time"
)

// demand counts the fetches that readers wait for, or soon will (reads,
// their read-ahead windows, prefetch), across the FileSystem. Background
// fetch starts a request only when there has been none for a moment, so
// that it uses the idle link without queueing ahead of a reader, or when
// readers, with no such pause, are reading in bulk: they have missed in
// backgroundBulkFiles different files, or in backgroundBulkBurst within
// backgroundBulkWithin.
type demand struct {
	clock   clock
	mu      sync.Mutex
	n       int
	idle    chan struct{} // closed while n == 0
	lastEnd time.Time
	// files holds the files that reads missed in during the current busy
	// period, until it is in bulk; recent holds when the last
	// backgroundBulkBurst of them were first missed in.
	files  map[string]struct{}
	recent []time.Time
	inBulk bool
	bulk   chan struct{} // closed when inBulk
}

func newDemand(c clock) *demand {
	d := &demand{clock: c, idle: make(chan struct{}), bulk: make(chan struct{}), files: map[string]struct{}{}}
	close(d.idle)
	return d
}

// begin counts a fetch in. file names the file a read missed in, or is ""
// for a fetch ahead of readers.
func (d *demand) begin(file string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.clock.Now()
	if d.n == 0 {
		d.idle = make(chan struct{})
		if now.Sub(d.lastEnd) >= backgroundQuiet && (len(d.files) > 0 || d.inBulk) {
			// A new busy period.
			clear(d.files)
			d.recent, d.inBulk = d.recent[:0], false
			d.bulk = make(chan struct{})
		}
	}
	d.n++
	if _, ok := d.files[file]; file == "" || ok || d.inBulk {
		return
	}
	d.files[file] = struct{}{}
	if len(d.recent) == backgroundBulkBurst {
		d.recent = append(d.recent[:0], d.recent[1:]...)
	}
	d.recent = append(d.recent, now)
	if len(d.files) >= backgroundBulkFiles || (len(d.recent) == backgroundBulkBurst && now.Sub(d.recent[0]) <= backgroundBulkWithin) {
		d.inBulk = true
		clear(d.files)
		close(d.bulk)
	}
}

func (d *demand) end() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.n--
	if d.n == 0 {
		d.lastEnd = d.clock.Now()
		close(d.idle)
	}
}

// touch makes readers near, as if a demand fetch had just ended: a layer
// was mounted, and the container that reads it starts soon.
func (d *demand) touch() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.n == 0 {
		d.lastEnd = d.clock.Now()
	}
}

// near reports whether a demand fetch ran within d, and readers are not
// reading in bulk: a reader in bulk is served by the background fetch.
func (d *demand) near(within time.Duration) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.inBulk {
		return false
	}
	return d.n > 0 || d.clock.Now().Sub(d.lastEnd) < within
}

// waitQuiet returns when no demand fetch has run for quiet, when reads
// with no pause as long as quiet read in bulk,
// or when ctx ends.
func (d *demand) waitQuiet(ctx context.Context, quiet time.Duration) error {
	for {
		d.mu.Lock()
		busy, idle, bulk, left := d.n > 0, d.idle, d.bulk, quiet-d.clock.Now().Sub(d.lastEnd)
		inBulk := d.inBulk
		d.mu.Unlock()
		if inBulk && (busy || left > 0) {
			return ctx.Err()
		}
		var wake <-chan time.Time
		switch {
		case busy:
		case left <= 0:
			return ctx.Err()
		default:
			wake, idle = d.clock.After(left), nil
		}
		select {
		case <-idle:
		case <-bulk:
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// idleSlots are the requests that wait for readers to leave the link idle
// (background fetch, background verification), all layers together.
type idleSlots struct {
	d     *demand
	slots chan struct{} // bounds the requests
	near  chan struct{} // the one request while readers are near
}

func newIdleSlots(d *demand, n int) *idleSlots {
	return &idleSlots{d: d, slots: make(chan struct{}, n), near: make(chan struct{}, 1)}
}

// acquire waits for one of the slots and for readers to be quiet; while
// readers are near, also for the one slot of that time. It returns the
// function that releases what it holds, or false, holding nothing, when
// ctx ends first.
func (s *idleSlots) acquire(ctx context.Context) (func(), bool) {
	select {
	case s.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, false
	}
	for {
		if s.d.waitQuiet(ctx, backgroundQuiet) != nil {
			<-s.slots
			return nil, false
		}
		if !s.d.near(backgroundNear) {
			return func() { <-s.slots }, true
		}
		select {
		case s.near <- struct{}{}:
			return func() { <-s.near; <-s.slots }, true
		case <-s.d.clock.After(backgroundQuiet):
			// Check again: readers may have come back, or gone.
		case <-ctx.Done():
			<-s.slots
			return nil, false
		}
	}
}
