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

func newDemand() *demand {
	d := &demand{idle: make(chan struct{}), bulk: make(chan struct{}), files: map[string]struct{}{}}
	close(d.idle)
	return d
}

// begin counts a fetch in. file names the file a read missed in, or is ""
// for a fetch ahead of readers.
func (d *demand) begin(file string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
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
		d.lastEnd = time.Now()
		close(d.idle)
	}
}

// touch makes readers near, as if a demand fetch had just ended: a layer
// was mounted, and the container that reads it starts soon.
func (d *demand) touch() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.n == 0 {
		d.lastEnd = time.Now()
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
	return d.n > 0 || time.Since(d.lastEnd) < within
}

// waitQuiet returns when no demand fetch has run for quiet, when reads
// with no pause as long as quiet read in bulk,
// or when ctx ends.
func (d *demand) waitQuiet(ctx context.Context, quiet time.Duration) error {
	for {
		d.mu.Lock()
		busy, idle, bulk, left := d.n > 0, d.idle, d.bulk, quiet-time.Since(d.lastEnd)
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
			wake, idle = time.After(left), nil
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
