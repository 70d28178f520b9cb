package fs

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/estargz"
)

// landmarkPolicy is the landmark prefetch: a layer's files before its
// prefetch landmark, which the image's builder saw a workload read at
// start-up, are fetched from the moment the layer is mounted. Mount waits
// for them up to WithPrefetchWait.
type landmarkPolicy struct {
	concurrency int           // see WithFetchConcurrency
	memory      int64         // see WithMemoryCacheSize
	wait        time.Duration // see WithPrefetchWait
}

func (p *landmarkPolicy) Name() string { return "landmark" }

func (p *landmarkPolicy) Attach(ctx context.Context, l *Layer, _ map[string]string) any {
	cs := landmarkChunks(l)
	if len(cs) == 0 {
		return nil
	}
	done := make(chan struct{})
	lg := log.G(ctx).WithField("layer", l.Digest())
	if !l.Go("prefetch", func(lctx context.Context) { defer close(done); p.prefetch(lctx, lg, l, cs) }) {
		return nil
	}
	if p.wait > 0 {
		t := time.NewTimer(p.wait)
		defer t.Stop()
		select {
		case <-done:
		case <-t.C:
		case <-ctx.Done():
		}
	}
	return nil
}

// landmarkChunks returns the chunks before the layer's prefetch landmark.
// Of a file larger than maxRandomWhole compressed, only the first chunk:
// the list names files, not what of them was read, and a workload that
// opens so large a file at start-up reads parts of it (a JVM's module
// image, 45 MB, of which it reads a tenth), which the whole would only
// delay.
func landmarkChunks(l *Layer) []chunk {
	lm, ok := l.Lookup(estargz.PrefetchLandmark)
	if !ok {
		return nil
	}
	cs := l.table()
	cs = cs[:sort.Search(len(cs), func(i int) bool { return cs[i].start >= lm.Offset })]
	var out []chunk
	for i := 0; i < len(cs); {
		j := i + 1
		for j < len(cs) && cs[j].e.Name == cs[i].e.Name {
			j++
		}
		if cs[j-1].end-cs[i].start > maxRandomWhole {
			out = append(out, cs[i])
		} else {
			out = append(out, cs[i:j]...)
		}
		i = j
	}
	return out
}

// prefetch fetches cs in parallel parts, as demand: background fetch waits
// for it, and readers of its chunks wait for their part only.
func (p *landmarkPolicy) prefetch(ctx context.Context, lg *log.Entry, l *Layer, cs []chunk) {
	started := time.Now()
	parts := splitParts(cs, p.concurrency, minPart, maxPart)
	l.demand().begin("")
	defer l.demand().end()
	// Files read at start-up are read soon: keep them in memory too, when
	// they fit without pushing everything else out.
	pri := Later
	if cs[len(cs)-1].end-cs[0].start <= p.memory/4 {
		pri = Soon
	}
	ch := make(chan []chunk)
	var wg sync.WaitGroup
	for range min(p.concurrency, len(parts)) {
		wg.Go(l.l.guard("prefetch", func() {
			for part := range ch {
				l.fetchNow(ctx, part, pri)
			}
		}))
	}
	for _, part := range parts {
		select {
		case ch <- part:
		case <-ctx.Done():
		}
	}
	close(ch)
	wg.Wait()
	if ctx.Err() == nil {
		lg.WithFields(log.Fields{"bytes": cs[len(cs)-1].end - cs[0].start, "duration": time.Since(started)}).Debug("prefetch done")
	}
}
