package remote

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingObserver keeps what a Resolver tells its Observer, per host.
type countingObserver struct {
	mu       sync.Mutex
	requests map[string]map[int]int // host -> status -> count
	received map[string]int
	retried  map[string]int
	stalled  map[string]int
}

func newCountingObserver() *countingObserver {
	return &countingObserver{requests: map[string]map[int]int{}, received: map[string]int{},
		retried: map[string]int{}, stalled: map[string]int{}}
}

func (o *countingObserver) Request(host string, status int, d time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.requests[host] == nil {
		o.requests[host] = map[int]int{}
	}
	o.requests[host][status]++
}

func (o *countingObserver) Received(host string, n int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.received[host] += n
}

func (o *countingObserver) Retried(host string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.retried[host]++
}

func (o *countingObserver) Stalled(host string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.stalled[host]++
}

// TestObserverSeesRequests: the Observer is told of every request to the
// registry host with its status, of the bytes of the answers, and of a
// temporary failure retried.
func TestObserverSeesRequests(t *testing.T) {
	reg := newRegistry(t, 100_000)
	var failed atomic.Bool
	serve := reg.serve
	reg.serve = func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") == "bytes=1000-10999" && failed.CompareAndSwap(false, true) {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		serve(w, r)
	}
	obs := newCountingObserver()
	b, _ := mustOpen(t, newTestResolver(t, reg, WithObserver(obs)), reg, 10)
	p := make([]byte, 10_000)
	if _, err := b.ReadAt(context.Background(), p, 1000); err != nil {
		t.Fatal(err)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	h := reg.host()
	if got := obs.requests[h][http.StatusPartialContent]; got != 2 {
		t.Errorf("206 answers from %s: %d, want 2 (Open's tail, the read); all: %v", h, got, obs.requests)
	}
	if got := obs.requests[h][http.StatusServiceUnavailable]; got != 1 {
		t.Errorf("503 answers from %s: %d, want 1", h, got)
	}
	if obs.retried[h] != 1 {
		t.Errorf("retries of %s: %d, want 1", h, obs.retried[h])
	}
	if obs.received[h] < len(p)+10 {
		t.Errorf("bytes received from %s: %d, want at least %d", h, obs.received[h], len(p)+10)
	}
}

// TestObserverSeesStall: an answer that stalls is told as a stall of its
// host, and the read that asks again for the rest as a retry.
func TestObserverSeesStall(t *testing.T) {
	reg := newRegistry(t, 100_000)
	obs := newCountingObserver()
	b, _ := mustOpen(t, newTestResolver(t, reg, WithObserver(obs), WithStallTimeout(500*time.Millisecond)), reg, 10)
	stallOnce(t, reg, 1, false)
	if _, err := b.ReadAt(context.Background(), make([]byte, 10_000), 1000); err != nil {
		t.Fatal(err)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if h := reg.host(); obs.stalled[h] != 1 || obs.retried[h] != 1 {
		t.Errorf("%s: %d stalls and %d retries, want 1 and 1", h, obs.stalled[h], obs.retried[h])
	}
}
