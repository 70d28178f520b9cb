package fs

import (
	"context"
	"io"
	"sync"
)

// ProgressBlob is a Blob that tells how much of a read has arrived. With
// one, the FileSystem decompresses and verifies each chunk of a long read
// as soon as its bytes are in, and readers of the first chunks do not wait
// for the last: decompression is off the critical path.
type ProgressBlob interface {
	Blob
	// ReadAtProgress reads like ReadAt and, while bytes arrive, calls
	// progress with how many of p's leading bytes are in place (a count
	// that only grows), from the goroutine of ReadAtProgress.
	ReadAtProgress(ctx context.Context, p []byte, off int64, progress func(n int)) (int, error)
}

// arrival is a buffer that concurrent reads fill, each one part of it from
// the part's start onwards. Its readers take bytes as they come, and fail
// if a read does.
type arrival struct {
	buf   []byte
	mu    sync.Mutex
	cond  sync.Cond
	parts []arrivalPart // in buffer order, covering buf
	err   error         // the first failed read's
}

type arrivalPart struct{ lo, hi, got int }

// newArrival returns an arrival for buf, filled by n reads of (nearly)
// equal parts.
func newArrival(buf []byte, n int) *arrival {
	a := &arrival{buf: buf}
	a.cond.L = &a.mu
	part := (len(buf) + n - 1) / n
	for lo := 0; lo < len(buf) || len(a.parts) == 0; lo += part {
		a.parts = append(a.parts, arrivalPart{lo: lo, hi: min(lo+part, len(buf))})
	}
	return a
}

// progress is the progress function of part i's read.
func (a *arrival) progress(i int) func(n int) {
	return func(n int) {
		a.mu.Lock()
		a.parts[i].got = max(a.parts[i].got, n)
		a.mu.Unlock()
		a.cond.Broadcast()
	}
}

// done records the end of part i's read.
func (a *arrival) done(i int, err error) {
	a.mu.Lock()
	if err != nil {
		if a.err == nil {
			a.err = err
		}
	} else {
		p := &a.parts[i]
		p.got = p.hi - p.lo
	}
	a.mu.Unlock()
	a.cond.Broadcast()
}

// failed reports whether a read failed.
func (a *arrival) failed() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err != nil
}

// wait returns how many bytes from off (< len(buf)) are in, waiting until
// there is one, or the error of a failed read.
func (a *arrival) wait(off int) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	i := 0
	for i+1 < len(a.parts) && a.parts[i+1].lo <= off {
		i++
	}
	p := &a.parts[i]
	for a.err == nil && p.lo+p.got <= off {
		a.cond.Wait()
	}
	if a.err != nil {
		return 0, a.err
	}
	return p.lo + p.got - off, nil
}

// reader returns a reader of buf[lo:hi] that waits for its bytes.
func (a *arrival) reader(lo, hi int) io.Reader {
	return &arrivalReader{a: a, pos: lo, end: hi}
}

type arrivalReader struct {
	a        *arrival
	pos, end int
}

func (r *arrivalReader) Read(p []byte) (int, error) {
	if r.pos >= r.end {
		return 0, io.EOF
	}
	n, err := r.a.wait(r.pos)
	if err != nil {
		return 0, err
	}
	n = copy(p, r.a.buf[r.pos:r.pos+min(n, r.end-r.pos)])
	r.pos += n
	return n, nil
}
