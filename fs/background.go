package fs

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
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

// spawn runs fn, the layer's work what, in a goroutine that the layer and
// the FileSystem own: stop and Close wait for it. It returns false, and
// does not run fn, once either is stopping.
func (l *layer) spawn(what string, fn func()) bool {
	f := l.fsys
	f.mu.Lock()
	if f.closed || l.ctx.Err() != nil {
		f.mu.Unlock()
		return false
	}
	f.wg.Add(1)
	l.wg.Add(1)
	l.spawned.Add(1)
	f.mu.Unlock()
	go func() {
		defer f.wg.Done()
		defer l.wg.Done()
		defer l.spawned.Add(-1)
		defer l.recovered(what, nil)
		fn()
	}()
	return true
}

// stop cancels the layer's fetches and waits for its goroutines.
func (l *layer) stop() {
	l.fsys.mu.Lock()
	l.cancel()
	l.fsys.mu.Unlock()
	l.wg.Wait()
}

// start begins the layer's prefetch and, later, its background fetch. The
// returned channel is closed when the prefetch is over.
func (l *layer) start(ctx context.Context) <-chan struct{} {
	done := make(chan struct{})
	lg := log.G(ctx).WithField("layer", l.src.dgst)
	cs := l.prefetchChunks()
	if len(cs) == 0 || !l.spawn("prefetch", func() { defer close(done); l.prefetch(lg, cs) }) {
		close(done)
	}
	for _, name := range runtimeFiles {
		if e, ok := l.src.r.Lookup(name); ok && e.Type == "reg" {
			l.prefetchFile(e)
		}
	}
	cfg := &l.fsys.cfg
	if cfg.background && cfg.cache != nil && l.verifier != nil && len(l.src.chunks.cs) > 0 {
		l.spawn("background fetch", func() { l.background(lg) })
	} else if cfg.verify == VerifyBackground && l.verdict.Load() == nil {
		// Nothing will make the layer local: verification fetches it.
		l.spawn("verification", func() {
			t := time.NewTimer(cfg.backgroundDelay)
			defer t.Stop()
			select {
			case <-t.C:
				l.verifyLater(lg)
			case <-l.ctx.Done():
			}
		})
	}
	return done
}

// runtimeFiles are read from the image when any container of it is
// created, before its program starts: the runtime resolves the user and
// its groups there (containerd, the CRI plugin and Docker do).
var runtimeFiles = []string{"etc/passwd", "etc/group"}

// prefetchChunks returns the chunks before the layer's prefetch landmark:
// the files that the image's builder saw a workload read at start-up. Of a
// file larger than maxRandomWhole compressed, only the first chunk: the
// list names files, not what of them was read, and a workload that opens
// so large a file at start-up reads parts of it (a JVM's module image, 45
// MB, of which it reads a tenth), which the whole would only delay.
func (l *layer) prefetchChunks() []chunk {
	lm, ok := l.src.r.Lookup(estargz.PrefetchLandmark)
	if !ok {
		return nil
	}
	cs := l.src.chunks.cs
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
func (l *layer) prefetch(lg *log.Entry, cs []chunk) {
	started := time.Now()
	n := l.fsys.cfg.fetchConcurrency
	parts := splitParts(cs, n, minPart, maxPart)
	l.fsys.demand.begin("")
	defer l.fsys.demand.end()
	// Files read at start-up are read soon: keep them in memory too, when
	// they fit without pushing everything else out.
	keep := cs[len(cs)-1].end-cs[0].start <= l.fsys.cfg.memCacheSize/4
	l.pool(n, parts, func(part []chunk) { l.fetchAhead(l.ctx, part, keep) })
	if l.ctx.Err() == nil {
		lg.WithFields(log.Fields{"bytes": cs[len(cs)-1].end - cs[0].start, "duration": time.Since(started)}).Debug("prefetch done")
	}
}

// pool runs fn on each part with at most n at once.
func (l *layer) pool(n int, parts [][]chunk, fn func([]chunk)) {
	ch := make(chan []chunk)
	var wg sync.WaitGroup
	for range min(n, len(parts)) {
		wg.Go(l.guard("prefetch", func() {
			for p := range ch {
				fn(p)
			}
		}))
	}
	for _, p := range parts {
		select {
		case ch <- p:
		case <-l.ctx.Done():
		}
	}
	close(ch)
	wg.Wait()
}

// background fetches every chunk of the layer that is not local, in blob
// order, after the configured delay, with a few concurrent requests that
// each wait for readers to be quiet first.
func (l *layer) background(lg *log.Entry) {
	cfg := &l.fsys.cfg
	select {
	case <-time.After(cfg.backgroundDelay):
	case <-l.ctx.Done():
		return
	}
	started := time.Now()
	t := l.src.chunks
	buf := []byte(nil)
	for range backgroundPasses {
		parts := make(chan []chunk)
		go l.guard("background fetch", func() {
			defer close(parts)
			var part []chunk
			for _, c := range t.cs {
				if l.ctx.Err() != nil {
					return
				}
				if t.isLocal(c.idx) {
					continue
				}
				if l.inCache(c, &buf) {
					t.setLocal(c.idx, true)
					continue
				}
				if len(part) > 0 && (c.start > part[len(part)-1].end+mergeGap || c.end-part[0].start > backgroundPart) {
					select {
					case parts <- part:
					case <-l.ctx.Done():
						return
					}
					part = nil
				}
				part = append(part, c)
			}
			if len(part) > 0 {
				select {
				case parts <- part:
				case <-l.ctx.Done():
				}
			}
		})()
		var wg sync.WaitGroup
		for range cfg.backgroundConcurrency {
			wg.Go(l.guard("background fetch", func() {
				for part := range parts {
					l.backgroundPart(part)
				}
			}))
		}
		wg.Wait()
		if l.ctx.Err() != nil {
			return
		}
		if _, _, _, full := t.state(); !full.IsZero() {
			lg.WithField("duration", time.Since(started)).Info("layer fully local")
			l.verifyLater(lg)
			return
		}
	}
	n, local, _, _ := t.state()
	lg.WithFields(log.Fields{"chunks": n, "local": local}).Warn("background fetch left chunks behind")
	l.verifyLater(lg) // fetching, as it must, what is not local
}

// backgroundPart fetches part once it has a background request slot.
func (l *layer) backgroundPart(part []chunk) {
	release, ok := l.backgroundSlot()
	if !ok {
		return // drain: the producer stops on ctx too
	}
	defer release()
	l.fetchAhead(l.ctx, part, false)
}

// backgroundSlot waits for one of the FileSystem's background request
// slots and for readers to be quiet; while readers are near, also for the
// one slot of that time. It returns the function that releases what it
// holds, or false, holding nothing, when the layer stops first.
func (l *layer) backgroundSlot() (func(), bool) {
	f := l.fsys
	select {
	case f.bg <- struct{}{}:
	case <-l.ctx.Done():
		return nil, false
	}
	for {
		if f.demand.waitQuiet(l.ctx, backgroundQuiet) != nil {
			<-f.bg
			return nil, false
		}
		if !f.demand.near(backgroundNear) {
			return func() { <-f.bg }, true
		}
		select {
		case f.bgNear <- struct{}{}:
			return func() { <-f.bgNear; <-f.bg }, true
		case <-time.After(backgroundQuiet):
			// Check again: readers may have come back, or gone.
		case <-l.ctx.Done():
			<-f.bg
			return nil, false
		}
	}
}

// inCache reports whether the Cache holds an entry of c's size under c's
// key. The entry is not verified: a read verifies it before serving it.
func (l *layer) inCache(c chunk, buf *[]byte) bool {
	if has, known := l.cacheHas(c); known {
		return has
	}
	key := l.cacheKey(c)
	if key == "" {
		return false
	}
	if int64(cap(*buf)) < c.size {
		*buf = make([]byte, c.size)
	}
	n, ok := l.fsys.cfg.cache.Get(key, (*buf)[:c.size])
	return ok && int64(n) == c.size
}

// cacheHas reports whether the Cache holds an entry of c's size under c's
// key, and whether it could tell without reading the entry.
func (l *layer) cacheHas(c chunk) (has, known bool) {
	key := l.cacheKey(c)
	if key == "" || l.fsys.cfg.cache == nil {
		return false, true
	}
	if c2, ok := l.fsys.cfg.cache.(interface {
		Has(digest.Digest) (int64, bool)
	}); ok {
		// A look that neither counts as a use nor reads the entry.
		size, ok := c2.Has(key)
		return ok && size == c.size, true
	}
	if fc, ok := l.fsys.cfg.cache.(FileCache); ok {
		f, err := fc.Open(key)
		if err != nil {
			return false, true
		}
		defer f.Close()
		st, err := f.Stat()
		return err == nil && st.Size() == c.size, true
	}
	return false, false
}

// LayerStats is a snapshot of a mounted layer's fetch state.
type LayerStats struct {
	Mountpoint string
	Layer      digest.Digest
	// Chunks and LocalChunks count the chunks of the layer's file contents
	// and those of them known to be in the Cache.
	Chunks, LocalChunks int
	// TotalBytes and LocalBytes are the same in compressed bytes of the blob.
	TotalBytes, LocalBytes int64
	// FullyLocal is when every chunk was first local; zero until then.
	FullyLocal time.Time
	// Reads counts the FUSE read requests served (not those that the kernel
	// answered from its page cache or through passthrough).
	Reads int64
	// Fetches and FetchedBytes count the reads of the blob and their bytes.
	Fetches, FetchedBytes int64
}

// Stats returns the state of every mounted layer, by mountpoint.
func (f *FileSystem) Stats() []LayerStats {
	f.mu.Lock()
	var out []LayerStats
	for mp, m := range f.mounts {
		if m.server == nil {
			continue
		}
		out = append(out, LayerStats{Mountpoint: mp, Layer: m.layer.src.dgst})
	}
	layers := make(map[string]*layer, len(f.mounts))
	for mp, m := range f.mounts {
		layers[mp] = m.layer
	}
	f.mu.Unlock()
	for i := range out {
		l := layers[out[i].Mountpoint]
		s := &out[i]
		s.Chunks, s.LocalChunks, s.LocalBytes, s.FullyLocal = l.src.chunks.state()
		s.TotalBytes = l.src.chunks.payload
		s.Reads, s.Fetches, s.FetchedBytes = l.reads.Load(), l.fetches.Load(), l.fetched.Load()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Mountpoint < out[j].Mountpoint })
	return out
}
