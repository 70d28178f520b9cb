package remote

import (
	"context"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestConnectionsReused checks that concurrent reads keep their
// connections to the registry: a second round of as many concurrent
// requests reuses every connection the first round put back into the idle
// pool, and the pool takes them all. A new connection costs a round trip
// and TCP's slow start, which on a long link is several more.
func TestConnectionsReused(t *testing.T) {
	reg := newRegistry(t, 1<<20)
	const n = 8
	gather(t, reg, n)
	b, _ := mustOpen(t, newTestResolver(t, reg), reg, 10)
	ctx, pool := idleTrace(t)
	_, closedBefore := reg.conns()
	readConcurrently(t, ctx, b, n)
	idle := pool.settle(reg, n, closedBefore)
	before, _ := reg.conns()
	readConcurrently(t, ctx, b, n)
	if opened, _ := reg.conns(); opened-before > n-idle {
		t.Errorf("a second round of %d concurrent reads opened %d new connections with %d idle, want at most %d", n, opened-before, idle, n-idle)
	}
}

// The first reads after a blob is opened (a starting container's burst)
// find connections open: the resolver warmed them in the background.
func TestWarmConnections(t *testing.T) {
	reg := newRegistry(t, 1<<20)
	const n = 6
	gather(t, reg, n)
	r := newTestResolver(t, reg, WithWarmConnections(n))
	ctx, pool := idleTrace(t)
	b, _, err := r.Open(ctx, reg.ref(), reg.dgst, 10) // the warm-up inherits the trace
	if err != nil {
		t.Fatal(err)
	}
	idle := pool.settle(reg, n+1, 0) // Open's connection and the warm-up's
	before, _ := reg.conns()
	if before < n {
		t.Fatalf("after Open, %d connections were opened, want at least %d", before, n)
	}
	readConcurrently(t, context.Background(), b, n)
	if opened, _ := reg.conns(); opened-before > max(0, n-idle) {
		t.Errorf("%d concurrent reads after the warm-up opened %d new connections with %d idle, want at most %d", n, opened-before, idle, max(0, n-idle))
	}
	// Opening another blob of the host soon after warms nothing again: the
	// decision is made before Open returns.
	warmed := r.state(reg.host()).warmedAt.Load()
	had := len(reg.requests())
	mustOpen(t, r, reg, 10)
	if got := len(reg.requests()) - had; got != 1 || r.state(reg.host()).warmedAt.Load() != warmed {
		t.Errorf("a second Open made %d requests and warmed again (%v), want 1 and no warm-up", got, r.state(reg.host()).warmedAt.Load() != warmed)
	}
}

// gather makes reg hold its range requests (not the suffix requests of
// Open) in groups of n, each until the whole group has arrived, so that n
// concurrent reads are sure to need n connections at once.
func gather(t *testing.T, reg *registry, n int) {
	var (
		mu      sync.Mutex
		arrived int
		full    = map[int]chan struct{}{}
	)
	group := func(g int) chan struct{} {
		if full[g] == nil {
			full[g] = make(chan struct{})
		}
		return full[g]
	}
	serve := reg.serve
	reg.serve = func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.Header.Get("Range"), "bytes=-") {
			mu.Lock()
			g := arrived / n
			arrived++
			ch := group(g)
			if arrived%n == 0 {
				close(ch)
			}
			mu.Unlock()
			select {
			case <-ch:
			case <-time.After(10 * time.Second):
				t.Errorf("request %d waited 10s for %d others to arrive at once", g, n-1)
			}
		}
		serve(w, r)
	}
}

// idlePool counts what became of the connections of traced requests once
// their answers were read.
type idlePool struct {
	t        *testing.T
	idle     atomic.Int32 // put back into the idle pool
	rejected atomic.Int32 // refused by the pool (too many idle ones)
}

// idleTrace returns a context whose requests report to the returned pool.
func idleTrace(t *testing.T) (context.Context, *idlePool) {
	p := &idlePool{t: t}
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		PutIdleConn: func(err error) {
			if err == nil {
				p.idle.Add(1)
			} else {
				p.rejected.Add(1)
			}
		},
	})
	return ctx, p
}

// settle waits until each of n traced requests' connections has gone back
// to the idle pool, been refused by it, or been closed (net/http drops a
// connection whose request it has not seen written within 50ms, which on a
// busy machine happens), counting closes from closedBefore on. It fails
// the test if the pool refused any, or took none back (how many net/http
// closes depends on the machine's speed, so only none leaves the test
// with nothing to check), and returns how many it took back.
func (p *idlePool) settle(reg *registry, n, closedBefore int) int {
	p.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		_, closed := reg.conns()
		idle, rejected := int(p.idle.Load()), int(p.rejected.Load())
		if idle+rejected+closed-closedBefore >= n {
			if rejected > 0 || idle == 0 {
				p.t.Fatalf("of %d connections, the idle pool took %d back and refused %d, want all taken back", n, idle, rejected)
			}
			return idle
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("after a minute, of %d connections %d are idle, %d refused by the pool, %d closed", n, idle, rejected, closed-closedBefore)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// readConcurrently reads n small ranges of b at once.
func readConcurrently(t *testing.T, ctx context.Context, b *Blob, n int) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if _, err := b.ReadAt(ctx, make([]byte, 1000), int64(i)*100_000); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
}
