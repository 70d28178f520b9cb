package fs

import (
	"sync/atomic"
	"time"
)

// What the FileSystem counts for its operators, read with Metrics: the
// latency of the FUSE operations it answers, how reads found the chunks
// they needed, the verdicts of verification and the panics it recovered.
// The counters are atomics of the FileSystem, updated by one-line calls
// where the events happen, so that a read pays a few atomic adds; the
// owner of the FileSystem turns a Metrics snapshot into whatever metrics
// system it uses. Per-layer fetch progress is Stats.

// op is a FUSE operation the FileSystem answers.
type op int

const (
	opLookup op = iota
	opGetattr
	opGetxattr
	opListxattr
	opReaddir
	opReadlink
	opOpen
	opRead
	opStatfs
	numOps
)

var opNames = [numOps]string{"lookup", "getattr", "getxattr", "listxattr", "readdir", "readlink", "open", "read", "statfs"}

// latencyBounds are the upper bounds, in seconds, of the buckets of the
// FUSE operation latency histograms: from an answer out of memory (tens of
// microseconds) to a read that waits for the registry (seconds).
var latencyBounds = [...]float64{
	0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
	0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

// LatencyBuckets returns the upper bounds, in seconds, of the buckets of
// the histograms of Metrics.Ops.
func LatencyBuckets() []float64 { return append([]float64(nil), latencyBounds[:]...) }

// histogram counts durations into latencyBounds, lock-free.
type histogram struct {
	buckets [len(latencyBounds) + 1]atomic.Uint64 // one per bound, then +Inf
	sum     atomic.Int64                          // nanoseconds
}

func (h *histogram) observe(d time.Duration) {
	s := d.Seconds()
	i := 0
	for i < len(latencyBounds) && s > latencyBounds[i] {
		i++
	}
	h.buckets[i].Add(1)
	h.sum.Add(int64(d))
}

// stats are the FileSystem's counters.
type stats struct {
	ops              [numOps]histogram
	hits, misses     atomic.Uint64 // chunks that reads found in memory or the Cache, and did not
	verified, failed atomic.Uint64 // verdicts on mounted layers
}

// timed records the latency of a FUSE operation that started at start:
// `defer n.l.timed(opRead, time.Now())` at the top of a handler.
func (l *layer) timed(o op, start time.Time) { l.fsys.stats.ops[o].observe(time.Since(start)) }

// countLookup records whether a reader found a chunk local.
func (s *stats) countLookup(hit bool) {
	if hit {
		s.hits.Add(1)
	} else {
		s.misses.Add(1)
	}
}

// countVerdict records a verdict on a mounted layer.
func (s *stats) countVerdict(ok bool) {
	if ok {
		s.verified.Add(1)
	} else {
		s.failed.Add(1)
	}
}

// OpLatency is the latency histogram of one FUSE operation: Buckets[i]
// counts the operations that took at most LatencyBuckets()[i] seconds and
// more than the bound before (not cumulative); the last counts those
// above every bound.
type OpLatency struct {
	Op      string
	Buckets []uint64
	Count   uint64
	Sum     time.Duration
}

// Metrics is a snapshot of the FileSystem's counters, each counted since
// New.
type Metrics struct {
	// Ops has one histogram per FUSE operation the FileSystem answers.
	Ops []OpLatency
	// ChunkHits and ChunkMisses count the chunks readers asked for that
	// were in memory or in the Cache, and those that had to be fetched (or
	// waited for while another fetch brought them).
	ChunkHits, ChunkMisses uint64
	// Verified and VerifyFailed count the verdicts on mounted layers
	// (one per layer and mount, whoever reached it).
	Verified, VerifyFailed uint64
	// Panics counts the panics recovered (see guard.go).
	Panics int64
}

// Metrics returns the FileSystem's counters.
func (f *FileSystem) Metrics() Metrics {
	m := Metrics{
		Ops:          make([]OpLatency, numOps),
		ChunkHits:    f.stats.hits.Load(),
		ChunkMisses:  f.stats.misses.Load(),
		Verified:     f.stats.verified.Load(),
		VerifyFailed: f.stats.failed.Load(),
		Panics:       f.panics.Load(),
	}
	for o := range numOps {
		h := &f.stats.ops[o]
		ol := OpLatency{Op: opNames[o], Buckets: make([]uint64, len(h.buckets)), Sum: time.Duration(h.sum.Load())}
		for i := range h.buckets {
			ol.Buckets[i] = h.buckets[i].Load()
			ol.Count += ol.Buckets[i]
		}
		m.Ops[o] = ol
	}
	return m
}
