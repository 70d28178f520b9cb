package fs

import (
	"cmp"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
)

// chunkTable lists every chunk of a layer's file contents in blob order, so
// that fetches can look past the chunks a read asked for (read-ahead,
// prefetch, background fetch), and remembers which chunks are local: stored
// in the Cache by this process. Local is a hint that lets fetches skip
// chunks, never a promise: a read still verifies what the Cache returns,
// and a Cache that lost an entry turns it back into a miss.
//
// It is derived from the TOC alone and shared by every mount of the layer.
type chunkTable struct {
	cs      []chunk                   // in blob order
	idx     map[*estargz.TOCEntry]int // chunk entry -> index in cs
	payload int64                     // compressed bytes of all chunks

	mu         sync.Mutex
	local      []bool
	nLocal     int
	localBytes int64
	fullAt     time.Time // when every chunk was first local at once
}

// buildChunks lists the chunks of the regular files of the tree, and
// checks each against the blob: where its compressed bytes lie, and how
// many bytes they can inflate to. entries are those of the TOC, in its
// order, which for the layers estargz builds is the order of their content
// in the blob: the sort finds the chunks in order. checkTOC has made sure
// that each file's chunks, as estargz finds them, cover it in order.
func (s *source) buildChunks(entries []*estargz.TOCEntry, lim Limits) error {
	t := &chunkTable{cs: make([]chunk, 0, len(entries))}
	for _, e := range entries {
		if e.Type != "reg" || e.Size <= 0 {
			continue
		}
		if _, ok := s.ino[e]; !ok {
			continue // not in the tree: replaced by a later entry of its name
		}
		for off := int64(0); off < e.Size; {
			ce, ok := s.r.ChunkEntryForOffset(e.Name, off)
			if !ok || ce.ChunkOffset != off || ce.ChunkSize <= 0 {
				return fmt.Errorf("file %q: no chunk at offset %d", e.Name, off)
			}
			c := chunk{
				e: ce, off: ce.ChunkOffset, size: ce.ChunkSize,
				start: ce.Offset, end: min(ce.NextOffset(), s.payloadEnd), inner: ce.InnerOffset,
			}
			if err := c.check(s.payloadEnd, lim); err != nil {
				return fmt.Errorf("file %q: %v", e.Name, err)
			}
			off = c.off + c.size
			t.cs = append(t.cs, c)
		}
	}
	// Stable, so that of chunks at one place the first in the TOC stays.
	slices.SortStableFunc(t.cs, func(a, b chunk) int {
		return cmp.Or(cmp.Compare(a.start, b.start), cmp.Compare(a.inner, b.inner))
	})
	t.cs = slices.CompactFunc(t.cs, func(a, b chunk) bool { return a.start == b.start && a.inner == b.inner })
	t.idx = make(map[*estargz.TOCEntry]int, len(t.cs))
	for i := range t.cs {
		t.cs[i].idx = i
		t.idx[t.cs[i].e] = i
		t.payload += t.cs[i].end - t.cs[i].start
	}
	t.local = make([]bool, len(t.cs))
	s.chunks = t
	return nil
}

// check checks that the chunk's compressed bytes lie in the payload, that
// a read of them, held whole in memory, is bounded, and that they can
// inflate to the bytes the chunk says it holds, which a read allocates.
func (c *chunk) check(payloadEnd int64, lim Limits) error {
	switch span := c.end - c.start; {
	case c.start < 0 || span <= 0:
		return fmt.Errorf("chunk at offset %d: compressed bytes at %d, outside the payload of %d bytes or overlapping the next chunk's", c.off, c.start, payloadEnd)
	case span > lim.ChunkSize:
		return fmt.Errorf("chunk at offset %d: %d compressed bytes, more than %d (limit max_chunk_size)", c.off, span, lim.ChunkSize)
	case c.inner+c.size > span*maxInflation:
		return fmt.Errorf("chunk at offset %d: %d bytes cannot inflate from %d compressed bytes", c.off, c.inner+c.size, span)
	}
	return nil
}

// index returns the position of chunk entry ce in the table, or -1.
func (t *chunkTable) index(ce *estargz.TOCEntry) int {
	if i, ok := t.idx[ce]; ok {
		return i
	}
	return -1
}

func (t *chunkTable) isLocal(i int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return i >= 0 && t.local[i]
}

// setLocal records whether chunk i is in the Cache.
func (t *chunkTable) setLocal(i int, local bool) {
	if i < 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.local[i] == local {
		return
	}
	t.local[i] = local
	n := t.cs[i].end - t.cs[i].start
	if !local {
		t.nLocal--
		t.localBytes -= n
		return
	}
	t.nLocal++
	t.localBytes += n
	if t.nLocal == len(t.cs) && t.fullAt.IsZero() {
		t.fullAt = time.Now()
	}
}

// state returns how much of the layer is local and when it first all was.
func (t *chunkTable) state() (chunks, local int, localBytes int64, full time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.cs), t.nLocal, t.localBytes, t.fullAt
}
