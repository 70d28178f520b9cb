package fs

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// load returns the decompressed, verified data of each chunk of file name.
// Chunks come from memory, then the Cache, then the blob; the chunks the
// blob must provide are fetched with one read per run of adjacent chunks,
// and a chunk already being fetched by another reader is waited for.
func (l *layer) load(ctx context.Context, name string, cs []chunk) ([][]byte, error) {
	data := make([][]byte, len(cs))
	var missing []int
	for i, c := range cs {
		if b, ok := l.cached(ctx, name, c); ok {
			data[i] = b
			continue
		}
		missing = append(missing, i)
	}
	if len(missing) == 0 {
		return data, nil
	}
	keys := make([]flightKey, len(missing))
	for j, i := range missing {
		keys[j] = flightKey{cs[i].start, cs[i].inner}
	}
	calls, owned := l.flights.claim(keys)
	var run []chunk
	var runCalls []*flight
	flush := func() {
		if len(run) > 0 {
			l.fetch(ctx, name, run, runCalls)
			run, runCalls = nil, nil
		}
	}
	for j, i := range missing {
		if !owned[j] {
			continue
		}
		if len(run) > 0 && cs[i].start > run[len(run)-1].end {
			flush()
		}
		run = append(run, cs[i])
		runCalls = append(runCalls, calls[j])
	}
	flush()
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
	return data, nil
}

// cached returns the chunk from memory or from the Cache, verified.
func (l *layer) cached(ctx context.Context, name string, c chunk) ([]byte, bool) {
	mkey := memKey{l.src.dgst, c.start, c.inner}
	if b, ok := l.fsys.mem.get(mkey); ok {
		return b, true
	}
	key := l.cacheKey(c)
	if key == "" || l.fsys.cfg.cache == nil {
		return nil, false
	}
	b := make([]byte, c.size)
	n, ok := l.fsys.cfg.cache.Get(key, b)
	if !ok || int64(n) != c.size {
		return nil, false
	}
	if err := l.verify(c, b); err != nil {
		log.G(ctx).WithError(err).WithFields(log.Fields{"layer": l.src.dgst, "file": name, "key": key}).Warn("discarding corrupt cache entry")
		return nil, false
	}
	l.fsys.mem.put(mkey, b)
	return b, true
}

// fetch reads the adjacent chunks of run with one blob read, then
// decompresses, verifies and stores each, and completes its flight. A chunk
// that fails verification fails alone.
func (l *layer) fetch(ctx context.Context, name string, run []chunk, calls []*flight) {
	start, end := run[0].start, run[0].end
	for _, c := range run {
		end = max(end, c.end)
	}
	// The read runs in the FileSystem's lifetime, not the request's: other
	// readers wait for it, and an interrupted reader must not fail them.
	buf := make([]byte, end-start)
	_, err := l.src.blob.ReadAt(l.fsys.life, buf, start)
	if err != nil {
		err = fmt.Errorf("layer %s: file %s: fetch %d bytes at %d: %w", l.src.dgst, name, len(buf), start, err)
		log.G(ctx).WithError(err).WithFields(log.Fields{"layer": l.src.dgst, "file": name}).Error("fetch failed")
	}
	for i, c := range run {
		if err != nil {
			l.flights.finish(calls[i], nil, err)
			continue
		}
		data, cerr := l.decode(c, buf[c.start-start:c.end-start])
		if cerr != nil {
			cerr = fmt.Errorf("layer %s: file %s: %w", l.src.dgst, name, cerr)
			log.G(ctx).WithError(cerr).WithFields(log.Fields{"layer": l.src.dgst, "file": name}).Error("chunk verification failed")
			l.flights.finish(calls[i], nil, cerr)
			continue
		}
		l.fsys.mem.put(memKey{l.src.dgst, c.start, c.inner}, data)
		l.flights.finish(calls[i], data, nil)
		if key := l.cacheKey(c); key != "" && l.fsys.cfg.cache != nil {
			if perr := l.fsys.cfg.cache.Put(key, data); perr != nil {
				log.G(ctx).WithError(perr).WithFields(log.Fields{"layer": l.src.dgst, "file": name}).Warn("cache put failed")
			}
		}
	}
}

// decode decompresses chunk c from its gzip member and verifies it.
func (l *layer) decode(c chunk, member []byte) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(member))
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
	key  flightKey
	done chan struct{}
	data []byte
	err  error
}

// flights de-duplicates concurrent fetches of a layer's chunks.
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

// finish completes f. A failed fetch is not remembered: the next read retries.
func (fl *flights) finish(f *flight, data []byte, err error) {
	fl.mu.Lock()
	delete(fl.m, f.key)
	fl.mu.Unlock()
	f.data, f.err = data, err
	close(f.done)
}
