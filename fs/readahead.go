package fs

import (
	"context"
	"path"
	"sync"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/lazypull/lazypull/fs/internal/elfdeps"
)

// readaheadPolicy is read-ahead (WithReadahead): windows of the chunks
// that follow a reader's in blob order, and whole files for readers that
// jump around in one.
type readaheadPolicy struct {
	base int64 // the window's size; 0: off
}

func (p *readaheadPolicy) Name() string { return "read-ahead" }

func (p *readaheadPolicy) Attach(_ context.Context, l *Layer, _ map[string]string) any {
	if p.base <= 0 {
		return nil // each read fetches what it reads
	}
	return &readahead{base: p.base, last: -1, used: make([]bool, len(l.table())), missedAt: map[string]int{}}
}

var _ ReadObserver = (*readahead)(nil)

// Read starts the windows a read asks for.
func (ra *readahead) Read(l *Layer, ev ReadEvent) {
	ra.markUsed(ev.chunks)
	if ev.Hit {
		ra.hit(l, ev.chunks)
		return
	}
	// The window goes out first, so that it travels with the chunks the
	// read waits for instead of after them.
	ra.randomMiss(l, ev.missed)
	ra.miss(l, ev.chunks)
}

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
	base        int64 // the configured window size
	mu          sync.Mutex
	size        int64 // of the last window; 0 before the first
	start, next int   // chunk indices the last window covered: [start, next)
	mark        int   // a read reaching this chunk starts the next window
	last        int   // the last chunk of the last read, -1 before the first
	// used marks the chunks a reader asked for: read-ahead hit them.
	used []bool
	// missedAt holds, by file, the last chunk a read of it missed, or -1
	// once randomMiss has decided about it.
	missedAt map[string]int
}

// miss starts a window after cs, the chunks of a read that missed.
func (ra *readahead) miss(l *Layer, cs []chunk) {
	base := ra.base
	first, last := cs[0].idx, cs[len(cs)-1].idx
	if first < 0 || last < 0 {
		return
	}
	ra.mu.Lock()
	through := ra.size > 0 && first >= ra.start && first <= ra.next
	sequential := through || (ra.last >= 0 && first == ra.last+1)
	ra.last = last
	if !sequential {
		ra.mu.Unlock()
		return
	}
	size := base
	if through && (readsOn(l, first) || ra.wellUsed(ra.start, ra.next)) {
		// The reader came through the last window and reads on in the
		// same file, or read most of the window: it reads in blob order.
		size = min(2*ra.size, readaheadGrowth*base)
	}
	w := ra.window(l, last+1, size)
	ra.mu.Unlock()
	l.fetch(w, Soon)
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
func fileSpan(l *Layer, c chunk) int64 {
	e, ok := l.Lookup(c.e.Name)
	if !ok || e.Type != "reg" || c.size >= e.Size {
		return -1
	}
	all, err := l.fileChunks(e, 0, e.Size)
	if err != nil || len(all) < 2 {
		return -1
	}
	return all[len(all)-1].end - all[0].start
}

// randomMiss notes that a read of cs, chunks of one file, missed; it runs
// before miss. A second
// miss in a file that does not follow the first shows a reader jumping
// around in it, as a program does in a file it mapped (a class archive, a
// library loaded with dlopen): it will come back for more, each time a
// round trip, so the rest of the file, when it is not too large, is
// fetched at once.
func (ra *readahead) randomMiss(l *Layer, cs []chunk) {
	name := cs[0].e.Name
	first, last := cs[0].idx, cs[len(cs)-1].idx
	span := int64(-1)
	if cs[0].off == 0 {
		span = fileSpan(l, cs[0])
	}
	ra.mu.Lock()
	prev, seen := ra.missedAt[name]
	// A reader in blob order is read-ahead's.
	sequential := (ra.size > 0 && first >= ra.start && first <= ra.next) || (ra.last >= 0 && first == ra.last+1)
	jumped := seen && prev >= 0 && first != prev+1 && !sequential
	// A file of a few chunks opened at its start is read on, in an order
	// of its own when it is mapped (a class archive, a library).
	opened := !seen && !sequential && span > 0 && span <= openedWhole(cs[0].e)
	jumped = jumped || opened
	switch {
	case jumped:
		ra.missedAt[name] = -1
	case prev >= 0:
		ra.missedAt[name] = last
	}
	ra.mu.Unlock()
	if !jumped {
		return
	}
	e, ok := l.Lookup(name)
	if !ok || e.Type != "reg" {
		return
	}
	all, err := l.fileChunks(e, 0, e.Size)
	if err != nil || all[len(all)-1].end-all[0].start > maxRandomWhole {
		return
	}
	l.fetch(all, Soon)
}

// hit starts the next window early when a read that did not miss reaches
// the mark of the current one.
func (ra *readahead) hit(l *Layer, cs []chunk) {
	base := ra.base
	last := cs[len(cs)-1].idx
	if last < 0 {
		return
	}
	ra.mu.Lock()
	ra.last = last
	if ra.size == 0 || last < ra.mark || last >= ra.next {
		ra.mu.Unlock()
		return
	}
	size := base
	if readsOn(l, ra.next) || ra.wellUsed(ra.start, last+1) {
		size = min(2*ra.size, readaheadGrowth*base)
	}
	w := ra.window(l, ra.next, size)
	ra.mu.Unlock()
	l.fetch(w, Soon)
}

// readsOn reports whether chunk i continues the file of chunk i-1. Such
// reads grow the window; so do reads that used most of the last window
// (a reader of every file of a directory). A program that opens a few files
// of a directory reads in blob order too, but leaves most of each window
// unread: its window stays small, or a growing window would fetch
// megabytes it never reads.
func readsOn(l *Layer, i int) bool {
	cs := l.table()
	return i > 0 && i < len(cs) && cs[i].e.Name == cs[i-1].e.Name
}

// window returns the chunks from chunk from on that end within size
// compressed bytes of it (and the next chunk of the file being read, if the
// window starts inside one), and makes them the current window. ra.mu is
// held.
func (ra *readahead) window(l *Layer, from int, size int64) []chunk {
	cs := l.table()
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

// markUsed records that a reader asked for the chunks cs.
func (ra *readahead) markUsed(cs []chunk) {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	for _, c := range cs {
		if c.idx >= 0 {
			ra.used[c.idx] = true
		}
	}
}

// wellUsed reports whether readers asked for at least half of the chunks
// [from, to). ra.mu is held.
func (ra *readahead) wellUsed(from, to int) bool {
	from, to = max(from, 0), min(to, len(ra.used))
	if from >= to {
		return false
	}
	n := 0
	for _, u := range ra.used[from:to] {
		if u {
			n++
		}
	}
	return 2*n >= to-from
}
