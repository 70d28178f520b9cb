package fs

import (
	"context"
	"sync"
	"time"

	"github.com/containerd/log"
)

// Shape of the background fetch.
const (
	// backgroundPart is the size of one background request: large enough
	// that a few of them fill a long-latency link, small enough that a
	// reader arriving meanwhile waits for little more than its own request.
	backgroundPart = 1 << 20
	// backgroundQuiet is how long background fetch waits after the last
	// demand fetch ended before it starts a request, so that it does not
	// slip in between the reads of a starting program, which computes for
	// a few milliseconds between one file and the next.
	backgroundQuiet = 100 * time.Millisecond
	// backgroundBulkFiles and backgroundBulkBurst within
	// backgroundBulkWithin are how many different files readers may miss
	// in, without a pause of backgroundQuiet, before background fetch goes
	// on anyway: such a reader walks the image (every file, a large data
	// set, in an order of its own), and the background fetch, in large
	// requests in blob order, serves it sooner than its reads one by one.
	// A starting program misses in far fewer files, and more slowly, some
	// of them large and read in many pieces: it keeps the link busy too,
	// and a background request queued ahead of its next read only delays
	// it. (Measured on the 40 ms link: java misses in 16 files in 3.6 s,
	// python in 8; reading every file, 16 take 0.7 s.)
	backgroundBulkFiles  = 32
	backgroundBulkBurst  = 16
	backgroundBulkWithin = time.Second
	// backgroundNear is how long after the last demand fetch readers
	// count as near: until then background fetch keeps one request in
	// flight, not backgroundConcurrency, so that a reader that comes back
	// (a program that computed for a while, a container that starts a
	// moment after its image was pulled) finds little queued ahead of
	// it on the link.
	backgroundNear = time.Second
	// backgroundPasses bounds the sweeps over a layer: a chunk that fails
	// (a network error, a chunk that does not match its digest) is tried
	// again on the next sweep, and then left to readers.
	backgroundPasses = 3
)

// backgroundPolicy is the background fetch (WithBackgroundFetch): every
// chunk of a mounted layer that is not local is fetched, in blob order,
// when readers leave the link idle, until the layer is local.
type backgroundPolicy struct {
	delay       time.Duration // see WithBackgroundFetchDelay
	concurrency int           // see WithBackgroundFetchConcurrency
	clock       clock
}

func (p *backgroundPolicy) Name() string { return "background" }

// Attach starts the background fetch of a layer whose chunks can be
// verified and cached.
func (p *backgroundPolicy) Attach(ctx context.Context, l *Layer, _ map[string]string) any {
	if !l.cacheable() || len(l.table()) == 0 {
		return nil
	}
	lg := log.G(ctx).WithField("layer", l.Digest())
	if !l.Go("background fetch", func(ctx context.Context) { p.run(ctx, lg, l) }) {
		return nil
	}
	return p
}

func (p *backgroundPolicy) fetchesAll() bool { return true }

// background fetches every chunk of the layer that is not local, in blob
// order, after the configured delay, with a few concurrent requests that
// each wait for readers to be quiet first.
func (p *backgroundPolicy) run(ctx context.Context, lg *log.Entry, l *Layer) {
	select {
	case <-p.clock.After(p.delay):
	case <-ctx.Done():
		return
	}
	started := time.Now()
	for range backgroundPasses {
		parts := make(chan []chunk)
		go l.l.guard("background fetch", func() {
			defer close(parts)
			var part []chunk
			for _, c := range l.table() {
				if ctx.Err() != nil {
					return
				}
				if l.local(c) || l.Cached(ctx, Chunk{c: c}) {
					continue
				}
				if len(part) > 0 && (c.start > part[len(part)-1].end+mergeGap || c.end-part[0].start > backgroundPart) {
					select {
					case parts <- part:
					case <-ctx.Done():
						return
					}
					part = nil
				}
				part = append(part, c)
			}
			if len(part) > 0 {
				select {
				case parts <- part:
				case <-ctx.Done():
				}
			}
		})()
		var wg sync.WaitGroup
		for range p.concurrency {
			wg.Go(l.l.guard("background fetch", func() {
				for part := range parts {
					p.fetch(ctx, l, part)
				}
			}))
		}
		wg.Wait()
		if ctx.Err() != nil {
			return
		}
		if _, _, _, full := l.state(); full {
			lg.WithField("duration", time.Since(started)).Info("layer fully local")
			l.Local()
			return
		}
	}
	n, local, _, _ := l.state()
	// Verification fetches, as it must, what is not local.
	lg.WithFields(log.Fields{"chunks": n, "local": local}).Warn("background fetch left chunks behind")
	l.Local()
}

// fetch fetches part once the link is idle.
func (p *backgroundPolicy) fetch(ctx context.Context, l *Layer, part []chunk) {
	release, ok := l.idle(ctx)
	if !ok {
		return // drain: the producer stops on ctx too
	}
	defer release()
	l.fetchNow(ctx, part, Later)
}
