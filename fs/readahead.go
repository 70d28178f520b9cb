package fs

import (
	"fmt"
	"path"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/lazypull/lazypull/fs/internal/elfdeps"
)

// readaheadGrowth bounds how far a window grows for a reader that keeps
// reading on in blob order: to this many times the configured size.
const readaheadGrowth = 8

// readahead is a layer's read-ahead state. A reader that reads in blob
// order (the chunks of a read follow those of the read before it: a large
// file read from start to end, or file after file of a directory as the
// tar holds them) gets, with the chunks of a read that missed, a window of
// the chunks that follow them. A reader that jumps around the blob (a
// starting program opening its libraries and modules one by one) gets no
// window: on a link with a long round trip, every byte of a window it does
// not read delays the reads it waits for. A sequential reader (of a large
// file, or of most files of a window) that walks into the second half of
// the window starts the next window before it needs it, twice as large,
// so that it keeps the link busy and stops waiting for round trips.
type readahead struct {
	mu          sync.Mutex
	size        int64 // of the last window; 0 before the first
	start, next int   // chunk indices the last window covered: [start, next)
	mark        int   // a read reaching this chunk starts the next window
	last        int   // the last chunk of the last read, -1 before the first
}

// readaheadMiss starts a window after cs, the chunks of a read that missed.
func (l *layer) readaheadMiss(cs []chunk) {
	base := l.fsys.cfg.readahead
	first, last := cs[0].idx, cs[len(cs)-1].idx
	if base <= 0 || first < 0 || last < 0 {
		return
	}
	ra := &l.ra
	ra.mu.Lock()
	through := ra.size > 0 && first >= ra.start && first <= ra.next
	sequential := through || (ra.last >= 0 && first == ra.last+1)
	ra.last = last
	if !sequential {
		ra.mu.Unlock()
		return
	}
	size := base
	if through && (l.readsOn(first) || l.src.chunks.wellUsed(ra.start, ra.next)) {
		// The reader came through the last window and reads on in the
		// same file, or read most of the window: it reads in blob order.
		size = min(2*ra.size, readaheadGrowth*base)
	}
	w := l.window(last+1, size)
	ra.mu.Unlock()
	l.startWindow(w)
}

// maxRandomWhole is the largest file, in compressed bytes, that randomMiss
// fetches whole at a reader's second jump, and at its first read from the
// start of a library or program, which the loader maps and the program
// touches all over (a JVM's libjvm.so: 8.5 MB); maxOpenedWhole, at the
// first read from the start of another file.
const (
	maxRandomWhole = 16 << 20
	maxOpenedWhole = 8 << 20
)

// openedWhole is the largest file, in compressed bytes, that randomMiss
// fetches whole at its first read from the start of e.
func openedWhole(e *estargz.TOCEntry) int64 {
	if e.Mode&0o111 != 0 || elfdeps.IsSharedObjectName(path.Base(e.Name)) {
		return maxRandomWhole
	}
	return maxOpenedWhole
}

// fileSpan returns the compressed bytes of the file of chunk c, or -1 if
// the file is a single chunk.
func (l *layer) fileSpan(c chunk) int64 {
	e, ok := l.src.r.Lookup(c.e.Name)
	if !ok || e.Type != "reg" || c.size >= e.Size {
		return -1
	}
	all, err := l.chunks(e, 0, e.Size)
	if err != nil || len(all) < 2 {
		return -1
	}
	return all[len(all)-1].end - all[0].start
}

// randomMiss notes that a read of cs, chunks of one file, missed; it runs
// before readaheadMiss. A second
// miss in a file that does not follow the first shows a reader jumping
// around in it, as a program does in a file it mapped (a class archive, a
// library loaded with dlopen): it will come back for more, each time a
// round trip, so the rest of the file, when it is not too large, is
// fetched at once.
func (l *layer) randomMiss(cs []chunk) {
	if l.fsys.cfg.readahead <= 0 {
		return // read-ahead off: each read fetches what it reads
	}
	name := cs[0].e.Name
	first, last := cs[0].idx, cs[len(cs)-1].idx
	span := int64(-1)
	if cs[0].off == 0 {
		span = l.fileSpan(cs[0])
	}
	ra := &l.ra
	ra.mu.Lock()
	if l.missedAt == nil {
		l.missedAt = map[string]int{}
	}
	prev, seen := l.missedAt[name]
	// A reader in blob order is read-ahead's.
	sequential := (ra.size > 0 && first >= ra.start && first <= ra.next) || (ra.last >= 0 && first == ra.last+1)
	jumped := seen && prev >= 0 && first != prev+1 && !sequential
	// A file of a few chunks opened at its start is read on, in an order
	// of its own when it is mapped (a class archive, a library).
	opened := !seen && !sequential && span > 0 && span <= openedWhole(cs[0].e)
	jumped = jumped || opened
	switch {
	case jumped:
		l.missedAt[name] = -1
	case prev >= 0:
		l.missedAt[name] = last
	}
	ra.mu.Unlock()
	if !jumped {
		return
	}
	e, ok := l.src.r.Lookup(name)
	if !ok || e.Type != "reg" {
		return
	}
	all, err := l.chunks(e, 0, e.Size)
	if err != nil || all[len(all)-1].end-all[0].start > maxRandomWhole {
		return
	}
	l.startWindow(all)
}

// readaheadHit starts the next window early when a read that did not miss
// reaches the mark of the current one.
func (l *layer) readaheadHit(cs []chunk) {
	base := l.fsys.cfg.readahead
	last := cs[len(cs)-1].idx
	if base <= 0 || last < 0 {
		return
	}
	ra := &l.ra
	ra.mu.Lock()
	ra.last = last
	if ra.size == 0 || last < ra.mark || last >= ra.next {
		ra.mu.Unlock()
		return
	}
	size := base
	if l.readsOn(ra.next) || l.src.chunks.wellUsed(ra.start, last+1) {
		size = min(2*ra.size, readaheadGrowth*base)
	}
	w := l.window(ra.next, size)
	ra.mu.Unlock()
	l.startWindow(w)
}

// readsOn reports whether chunk i continues the file of chunk i-1. Such
// reads grow the window; so do reads that used most of the last window
// (a reader of every file of a directory). A program that opens a few files
// of a directory reads in blob order too, but leaves most of each window
// unread: its window stays small, or a growing window would fetch
// megabytes it never reads.
func (l *layer) readsOn(i int) bool {
	cs := l.src.chunks.cs
	return i > 0 && i < len(cs) && cs[i].e.Name == cs[i-1].e.Name
}

// window returns the chunks from chunk from on that end within size
// compressed bytes of it (and the next chunk of the file being read, if the
// window starts inside one), and makes them the current window. ra.mu is
// held.
func (l *layer) window(from int, size int64) []chunk {
	cs := l.src.chunks.cs
	ra := &l.ra
	ra.size, ra.start, ra.next, ra.mark = size, from, from, from
	if from >= len(cs) {
		return nil
	}
	base := cs[from].start
	end := from
	if from > 0 && cs[from].e.Name == cs[from-1].e.Name {
		// A file read on: its next chunk comes whatever its size.
		end++
	}
	// Only whole chunks that end inside the window: one large chunk of an
	// unrelated file must not turn a small window into megabytes.
	for end < len(cs) && cs[end].end <= base+size {
		if cs[end].start < base+size/2 {
			ra.mark = end + 1
		}
		end++
	}
	ra.next = end
	ra.mark = min(ra.mark, end-1)
	return cs[from:end]
}

// startWindow fetches the chunks of a window in the background, in up to
// fetchConcurrency parts of at least minPart bytes that go out at once. The
// chunks are claimed before it returns, so that the reader that started
// the window, reading on, waits for the window instead of fetching the
// same chunks again.
func (l *layer) startWindow(cs []chunk) {
	if len(cs) == 0 {
		return
	}
	for _, part := range splitParts(cs, l.fsys.cfg.fetchConcurrency, minPart, 0) {
		mine, calls := l.claimAhead(part)
		if len(mine) == 0 {
			continue
		}
		l.fsys.demand.begin("")
		if !l.spawn("read-ahead", func() {
			defer l.fsys.demand.end()
			l.fetchOwned(l.ctx, mine, calls, false, true)
		}) {
			l.fsys.demand.end()
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
