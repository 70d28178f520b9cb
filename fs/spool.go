package fs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
)

// spoolQueueBytes bounds the fetched bytes waiting to be written to
// spools: beyond it, a fetch is not spooled, and verification fetches its
// bytes again.
const spoolQueueBytes = 64 << 20

// spool keeps, while a layer waits for verification, the compressed bytes
// that fetches of its blob brought, at their blob offsets in a sparse file,
// and which ranges of the blob it holds; verification reads the blob from
// it and fetches only the rest (tar headers before the first file, chunks
// that came from the Cache, the TOC). Its content is unverified: the
// verification's digest of the whole blob checks it. Methods are safe for
// concurrent use.
type spool struct {
	path string
	size int64

	mu      sync.Mutex
	f       *os.File // nil once removed
	have    []span   // held ranges: sorted, disjoint, not adjacent
	removed bool
}

// span is the range [start, end) of a blob.
type span struct{ start, end int64 }

func openSpool(dir string, dgst digest.Digest, size int64) (*spool, error) {
	p := filepath.Join(dir, dgst.Algorithm().String()+"-"+dgst.Encoded())
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		os.Remove(p)
		return nil, err
	}
	return &spool{path: p, size: size, f: f}, nil
}

// write stores p at blob offset off.
func (s *spool) write(p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > s.size {
		return fmt.Errorf("spool write of %d bytes at %d outside the blob's %d", len(p), off, s.size)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.removed {
		return errors.New("spool removed")
	}
	if _, err := s.f.WriteAt(p, off); err != nil {
		return err
	}
	s.add(span{off, off + int64(len(p))})
	return nil
}

// add records sp as held, under mu.
func (s *spool) add(sp span) {
	if sp.end <= sp.start {
		return
	}
	i, _ := slices.BinarySearchFunc(s.have, sp.start, func(h span, x int64) int {
		switch {
		case h.end < x:
			return -1
		case h.start > x:
			return 1
		}
		return 0
	})
	j := i
	for j < len(s.have) && s.have[j].start <= sp.end {
		sp.start, sp.end = min(sp.start, s.have[j].start), max(sp.end, s.have[j].end)
		j++
	}
	s.have = slices.Replace(s.have, i, j, sp)
}

// run returns the end of the run of bytes from off that the spool holds
// (held) or lacks (!held).
func (s *spool) run(off int64) (end int64, held bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range s.have {
		switch {
		case off < h.start:
			return h.start, false
		case off < h.end:
			return h.end, true
		}
	}
	return s.size, false
}

func (s *spool) readAt(p []byte, off int64) (int, error) {
	s.mu.Lock()
	f := s.f
	s.mu.Unlock()
	if f == nil {
		return 0, errors.New("spool removed")
	}
	return f.ReadAt(p, off)
}

// held returns how many bytes the spool holds.
func (s *spool) held() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for _, h := range s.have {
		n += h.end - h.start
	}
	return n
}

// reset forgets everything the spool holds, after its content failed the
// blob's digest.
func (s *spool) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.have = nil
}

// remove deletes the spool's file; later writes fail.
func (s *spool) remove() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.removed {
		return nil
	}
	s.removed = true
	err := s.f.Close()
	s.f = nil
	return errors.Join(err, os.Remove(s.path))
}

// spoolQueue hands fetched bytes to the goroutine that writes them to their
// spools, off the path of the reads that fetched them.
type spoolQueue struct {
	ch     chan spoolWrite
	queued atomic.Int64 // bytes in ch
}

type spoolWrite struct {
	sp  *spool
	off int64
	p   []byte
}

// spoolFetched queues p, fetched from blob offset off of src, for src's
// spool, if it has one. p must not be changed afterwards. A full queue
// drops it: verification fetches it again.
func (f *FileSystem) spoolFetched(src *source, p []byte, off int64) {
	c := src.check.Load()
	if c == nil || c.spool == nil {
		return
	}
	q := &f.spoolq
	n := int64(len(p))
	if q.queued.Add(n) > spoolQueueBytes {
		q.queued.Add(-n)
		return
	}
	select {
	case q.ch <- spoolWrite{c.spool, off, p}:
	default:
		q.queued.Add(-n)
	}
}

// writeSpools writes queued fetches to their spools until the FileSystem
// closes.
func (f *FileSystem) writeSpools() {
	for {
		select {
		case w := <-f.spoolq.ch:
			f.writeSpool(w)
		case <-f.life.Done():
			return
		}
	}
}

// writeSpool makes one queued write. A panic fails that write alone, which
// costs the layer's verification a fetch of those bytes again.
func (f *FileSystem) writeSpool(w spoolWrite) {
	defer f.recovered(f.life, "spool write", nil)
	f.spoolq.queued.Add(-int64(len(w.p)))
	if err := w.sp.write(w.p, w.off); err != nil {
		log.G(f.life).WithError(err).WithField("spool", w.sp.path).Debug("spool write failed")
	}
}

// spoolBudget bounds the disk space that spools reserve, all layers
// together: a layer is spooled only if its whole blob fits.
type spoolBudget struct {
	max  int64 // 0: no spools
	used atomic.Int64
}

func (b *spoolBudget) reserve(n int64) bool {
	if b.used.Add(n) > b.max {
		b.used.Add(-n)
		return false
	}
	return true
}

func (b *spoolBudget) release(n int64) { b.used.Add(-n) }
