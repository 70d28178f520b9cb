package fs

import (
	"cmp"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// Sizes that shape blob reads.
const (
	// mergeGap is the largest run of bytes not wanted that a read fetches
	// anyway to join two runs of wanted chunks: up to it, one request costs
	// less than two.
	mergeGap = 64 << 10
	// minPart is the smallest piece a large read is split into for parallel
	// requests: below it the round trip dominates and splitting only adds
	// requests.
	minPart = 512 << 10
	// maxPart is the largest piece of a prefetch, so that a reader that
	// needs a chunk of a long prefetch waits for one piece, not for all,
	// and finds little queued ahead of its own read on the link: with
	// 4 MiB pieces, java's start from an image whose prioritized files
	// hold its whole module image took 3.96 s, with 1 MiB 3.27-3.52 s.
	maxPart = 1 << 20
)

// load returns the decompressed, verified data of each chunk of cs, the
// chunks of one read. Chunks come from memory, then the Cache, then the
// blob; a chunk already being fetched, by another reader or a policy, is
// waited for rather than fetched again. ev is the read of a reader, which
// the policies are told of, or nil.
func (l *layer) load(ctx context.Context, cs []chunk, ev *ReadEvent) (data [][]byte, err error) {
	data = make([][]byte, len(cs))
	var missing []int
	for i, c := range cs {
		b, ok := l.probe(ctx, c, true, nil)
		l.fsys.stats.countLookup(ok)
		if ok {
			data[i] = b
			continue
		}
		missing = append(missing, i)
	}
	if len(missing) == 0 {
		if ev != nil {
			ev.Hit = true
			l.observe(ev)
		}
		return data, nil
	}
	keys := make([]flightKey, len(missing))
	for j, i := range missing {
		keys[j] = flightKey{cs[i].start, cs[i].inner}
	}
	calls, owned := l.flights.claim(keys)
	// Those waiting for the chunks this read claimed must not wait for
	// ever: a panic ends their flights, and the read, with its error.
	defer l.recovered("read", func(perr error) {
		for j := range calls {
			if owned[j] {
				l.flights.finish(calls[j], nil, perr)
			}
		}
		data, err = nil, perr
	})
	var mine []chunk
	var mineCalls []*flight
	for j, i := range missing {
		if !owned[j] {
			continue
		}
		// A fetch that finished between the look above and the claim
		// left the chunk in memory or in the Cache.
		if b, ok := l.probe(ctx, cs[i], true, nil); ok {
			l.flights.finish(calls[j], b, nil)
			continue
		}
		mine = append(mine, cs[i])
		mineCalls = append(mineCalls, calls[j])
	}
	if ev != nil {
		// Before the fetch: what the policies fetch goes out with the
		// chunks the read waits for instead of after them.
		ev.Hit, ev.missed = len(mine) == 0, mine
		l.observe(ev)
	}
	if len(mine) > 0 {
		l.fsys.demand.begin(string(l.src.dgst) + "/" + cs[0].e.Name)
		// The fetch runs in the layer's lifetime, not the request's: other
		// readers may wait for it, and an interrupted reader must not fail them.
		l.fetchOwned(l.ctx, mine, mineCalls, true, true)
		l.fsys.demand.end()
	}
	for j, i := range missing {
		select {
		case <-calls[j].done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if calls[j].err != nil {
			return nil, calls[j].err
		}
		data[i] = calls[j].data
	}
	if ev != nil && cs[0].off == 0 && missing[0] == 0 {
		l.view.Announce(cs[0].e.Name, data[0])
	}
	return data, nil
}

func (l *layer) memKey(c chunk) memKey { return memKey{l.src.dgst, c.start, c.inner} }

// fetchAhead fetches those of cs (in blob order) that are neither local,
// nor in memory, nor being fetched by someone else: the path of the
// policies' fetches. keep says whether to keep the chunks in memory as
// well, for chunks likely to be read soon.
func (l *layer) fetchAhead(ctx context.Context, cs []chunk, keep bool) {
	if mine, calls := l.claimAhead(ctx, cs); len(mine) > 0 {
		l.fetchOwned(ctx, mine, calls, false, keep)
	}
}

// claimAhead claims those of cs that are neither local, nor in memory, nor
// being fetched, and returns them with their flights, which the caller
// must finish.
func (l *layer) claimAhead(ctx context.Context, cs []chunk) ([]chunk, []*flight) {
	var want []chunk
	var keys []flightKey
	for _, c := range cs {
		if _, ok := l.probe(ctx, c, false, nil); ok {
			continue
		}
		want = append(want, c)
		keys = append(keys, flightKey{c.start, c.inner})
	}
	if len(want) == 0 {
		return nil, nil
	}
	calls, owned := l.flights.claim(keys)
	var mine []chunk
	var mineCalls []*flight
	for i, c := range want {
		if owned[i] {
			mine = append(mine, c)
			mineCalls = append(mineCalls, calls[i])
		}
	}
	return mine, mineCalls
}

// startFetch fetches cs (in blob order) in the background, in up to
// fetchConcurrency parts of at least minPart bytes that go out at once.
// The chunks are claimed before it returns, so that a reader reading on
// waits for this fetch instead of fetching the same chunks again. A fetch
// of priority Soon counts as demand and keeps its chunks in memory.
func (l *layer) startFetch(cs []chunk, pri Priority) {
	if len(cs) == 0 {
		return
	}
	soon := pri == Soon
	for _, part := range splitParts(cs, l.fsys.cfg.fetchConcurrency, minPart, 0) {
		mine, calls := l.claimAhead(l.ctx, part)
		if len(mine) == 0 {
			continue
		}
		if soon {
			l.fsys.demand.begin("")
		}
		if !l.work.spawn("fetch ahead", func() {
			if soon {
				defer l.fsys.demand.end()
			}
			l.fetchOwned(l.ctx, mine, calls, false, soon)
		}) {
			if soon {
				l.fsys.demand.end()
			}
			for _, fl := range calls {
				l.flights.finish(fl, nil, fmt.Errorf("layer %s unmounted: %w", l.src.dgst, errdefs.ErrUnavailable))
			}
		}
	}
}

// splitParts cuts cs (in blob order) at chunk boundaries into at most n
// parts of about equal compressed size, each at least least bytes and, if
// most > 0, at most most bytes (a single chunk may be larger).
func splitParts(cs []chunk, n int, least, most int64) [][]chunk {
	if len(cs) == 0 {
		return nil
	}
	total := cs[len(cs)-1].end - cs[0].start
	size := max(least, (total+int64(n)-1)/int64(max(n, 1)))
	if most > 0 {
		size = min(size, most)
	}
	var parts [][]chunk
	from := 0
	for i := range cs {
		if cs[i].end-cs[from].start >= size || i == len(cs)-1 {
			parts = append(parts, cs[from:i+1])
			from = i + 1
		}
	}
	return parts
}

// sortChunks sorts cs in blob order, and returns it.
func sortChunks(cs []chunk) []chunk {
	slices.SortFunc(cs, func(a, b chunk) int { return cmp.Or(cmp.Compare(a.start, b.start), cmp.Compare(a.inner, b.inner)) })
	return cs
}

// fetchOwned fetches chunks cs, which the caller claimed with calls, and
// completes their flights. Chunks close together in the blob are fetched
// with one read; reads that are not adjacent go out concurrently. split
// allows a long read to be split into concurrent requests.
func (l *layer) fetchOwned(ctx context.Context, cs []chunk, calls []*flight, split, keep bool) {
	defer l.recovered("fetch", func(err error) {
		for _, c := range calls {
			l.flights.finish(c, nil, err)
		}
	})
	order := make([]int, len(cs))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(cs[a].start, cs[b].start) })
	var groups [][]int
	var end int64
	for _, i := range order {
		if n := len(groups); n > 0 && cs[i].start <= end+mergeGap {
			groups[n-1] = append(groups[n-1], i)
		} else {
			groups = append(groups, []int{i})
		}
		end = max(end, cs[i].end)
	}
	read := func(g []int) {
		gcs, gcalls := make([]chunk, len(g)), make([]*flight, len(g))
		for j, i := range g {
			gcs[j], gcalls[j] = cs[i], calls[i]
		}
		l.fetchGroup(ctx, gcs, gcalls, split, keep)
	}
	if len(groups) == 1 {
		read(groups[0])
		return
	}
	var wg sync.WaitGroup
	for _, g := range groups {
		wg.Go(l.guard("fetch", func() { read(g) }))
	}
	wg.Wait()
}

// fetchGroup reads the chunks of cs (in blob order, close together) with
// one read of the blob and, as their bytes arrive, decompresses, verifies
// and stores each, completing its flight as soon as it is verified: a
// reader of the first chunk waits neither for the last nor for its
// decompression. A chunk that fails verification fails alone, and is
// neither served nor cached.
func (l *layer) fetchGroup(ctx context.Context, cs []chunk, calls []*flight, split, keep bool) {
	defer l.recovered("fetch", func(err error) {
		for _, c := range calls {
			l.flights.finish(c, nil, err)
		}
	})
	start, end := cs[0].start, cs[0].end
	for _, c := range cs {
		end = max(end, c.end)
	}
	buf := make([]byte, end-start)
	arr := newArrival(buf, l.readParts(len(buf), split))
	read := make(chan error, 1)
	go func() {
		defer l.recovered("fetch", func(err error) {
			arr.done(0, err)
			read <- err
		})
		began := time.Now()
		err := l.readBlob(ctx, arr, start)
		log.G(ctx).WithFields(log.Fields{
			"layer": l.src.dgst, "offset": start, "bytes": len(buf), "chunks": len(cs),
			"file": cs[0].e.Name, "demand": split, "duration": time.Since(began),
		}).Debug("fetched")
		read <- err
	}()
	cache := l.fsys.caps.cache
	// The cache is written behind the decoding: a file write per chunk
	// would hold up the next chunks' readers (a directory's hundred small
	// files in one read).
	var store chan int
	if cache != nil {
		store = make(chan int, len(cs))
		stored := make(chan struct{})
		go func() {
			defer close(stored)
			defer l.recovered("cache write", nil)
			for i := range store {
				c := cs[i]
				if perr := cache.Put(l.cacheKey(c), calls[i].data); perr != nil {
					log.G(ctx).WithError(perr).WithFields(log.Fields{"layer": l.src.dgst, "file": c.e.Name}).Warn("cache put failed")
				} else {
					l.src.chunks.setLocal(c.idx, true)
				}
			}
		}()
		defer func() {
			close(store)
			<-stored
		}()
	}
	next := 0 // cs[:next] have finished
	for i, c := range cs {
		data, cerr := l.decode(c, arr.reader(int(c.start-start), int(c.end-start)))
		if cerr != nil && arr.failed() {
			break // the read's error, below
		}
		next = i + 1
		if cerr != nil {
			cerr = fmt.Errorf("layer %s: file %s: %w", l.src.dgst, c.e.Name, cerr)
			log.G(ctx).WithError(cerr).WithFields(log.Fields{"layer": l.src.dgst, "file": c.e.Name}).Error("chunk verification failed")
			l.flights.finish(calls[i], nil, cerr)
			continue
		}
		if keep || cache == nil {
			l.fsys.mem.put(l.memKey(c), data)
		}
		l.flights.finish(calls[i], data, nil)
		if store != nil && l.cacheKey(c) != "" {
			store <- i
		}
	}
	err := <-read
	if err == nil {
		l.fsys.spoolFetched(l.src, buf, start)
	}
	if next == len(cs) {
		return
	}
	if err == nil { // cannot happen: a decode fails early only on a failed read
		err = errors.New("read ended early")
	}
	err = fmt.Errorf("layer %s: fetch %d bytes at %d: %w", l.src.dgst, len(buf), start, err)
	if ctx.Err() == nil {
		log.G(ctx).WithError(err).WithField("layer", l.src.dgst).Error("fetch failed")
	}
	for i := next; i < len(cs); i++ {
		l.flights.finish(calls[i], nil, err)
	}
}

// readParts is how many concurrent requests read n bytes: with split, a
// long read goes out as up to fetchConcurrency requests of at least
// minPart bytes, which keeps a long-latency link busy where one request
// would wait out slow start.
func (l *layer) readParts(n int, split bool) int {
	if !split {
		return 1
	}
	return max(1, min(l.fsys.cfg.fetchConcurrency, n/minPart))
}

// readBlob fills arr's buffer from the blob at off, one request per part,
// concurrently, reporting the bytes as they arrive where the Blob can.
func (l *layer) readBlob(ctx context.Context, arr *arrival, off int64) error {
	if len(arr.parts) == 1 {
		return l.readPart(ctx, arr, 0, off)
	}
	errs := make([]error, len(arr.parts))
	var wg sync.WaitGroup
	for i := range arr.parts {
		wg.Go(l.guard("blob read", func() { errs[i] = l.readPart(ctx, arr, i, off) }))
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (l *layer) readPart(ctx context.Context, arr *arrival, i int, off int64) (err error) {
	// Decoders wait for the part's bytes: a panic of the Blob fails them.
	defer l.recovered("blob read", func(perr error) {
		arr.done(i, perr)
		err = perr
	})
	pt := arr.parts[i]
	p := arr.buf[pt.lo:pt.hi]
	l.fetches.Add(1)
	if pb := l.src.progress; pb != nil {
		_, err = pb.ReadAtProgress(ctx, p, off+int64(pt.lo), arr.progress(i))
	} else {
		_, err = l.src.blob.ReadAt(ctx, p, off+int64(pt.lo))
	}
	if err == nil {
		l.fetched.Add(int64(len(p)))
	}
	arr.done(i, err)
	return err
}

// decode decompresses chunk c from its gzip member and verifies it.
func (l *layer) decode(c chunk, member io.Reader) ([]byte, error) {
	zr, err := gzip.NewReader(member)
	if err != nil {
		return nil, fmt.Errorf("chunk at %d: %v: %w", c.off, err, errdefs.ErrDataLoss)
	}
	defer zr.Close()
	if _, err := io.CopyN(io.Discard, zr, c.inner); err != nil {
		return nil, fmt.Errorf("chunk at %d: %v: %w", c.off, err, errdefs.ErrDataLoss)
	}
	data := make([]byte, c.size)
	if _, err := io.ReadFull(zr, data); err != nil {
		return nil, fmt.Errorf("chunk at %d: %v: %w", c.off, err, errdefs.ErrDataLoss)
	}
	if err := l.verify(c, data); err != nil {
		return nil, err
	}
	return data, nil
}

// flightKey names a chunk within a blob.
type flightKey struct{ start, inner int64 }

// flight is one fetch of a chunk that concurrent readers share.
type flight struct {
	key      flightKey
	done     chan struct{}
	data     []byte
	err      error
	finished bool // under flights.mu
}

// flights de-duplicates concurrent fetches of a layer's chunks, whoever
// starts them: readers, read-ahead, prefetch or background fetch.
type flights struct {
	mu sync.Mutex
	m  map[flightKey]*flight
}

// claim returns the flight of each key and whether the caller owns it, that
// is must fetch it and finish it.
func (fl *flights) claim(keys []flightKey) ([]*flight, []bool) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.m == nil {
		fl.m = map[flightKey]*flight{}
	}
	calls := make([]*flight, len(keys))
	owned := make([]bool, len(keys))
	for i, k := range keys {
		if f, ok := fl.m[k]; ok {
			calls[i] = f
			continue
		}
		f := &flight{key: k, done: make(chan struct{})}
		fl.m[k] = f
		calls[i], owned[i] = f, true
	}
	return calls, owned
}

// finish completes f, unless it is complete already. A failed fetch is not
// remembered: the next read retries.
func (fl *flights) finish(f *flight, data []byte, err error) {
	fl.mu.Lock()
	if f.finished {
		fl.mu.Unlock()
		return
	}
	f.finished = true
	if fl.m[f.key] == f {
		delete(fl.m, f.key)
	}
	fl.mu.Unlock()
	f.data, f.err = data, err
	close(f.done)
}
