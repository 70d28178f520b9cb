package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
)

// A host that ignores Range answers every read with the whole blob, and
// cutting each read's window out of such an answer costs the blob's size
// per read (a 66 MB image cost 592 MB). Instead, the first whole answer for
// a blob is kept: written to a spool file as it arrives, from which every
// read of that blob is then served, waiting for its bytes if they have not
// arrived yet. A blob then crosses the network once. Spool files are
// unlinked as soon as they are created (nothing is left behind, whatever
// happens to the process) and private to the daemon; their total size is
// bounded (WithSpool), the least recently read going first, and a spool
// unread for spoolIdle is dropped. The bytes are as trustworthy as the
// wire's: the reader verifies what it reads.

// spoolIdle is how long a spool nobody reads is kept: by then its layer's
// contents are in the chunk cache, or nobody wants them.
const spoolIdle = 10 * time.Minute

// spoolBuf is the most a spool download reads before writing.
const spoolBuf = 256 << 10

// spoolKey names a blob of a repository: a spool serves only the
// repository that its bytes came from.
type spoolKey struct {
	registry, repo string
	dgst           digest.Digest
}

// spools are the spool files of a Resolver.
type spools struct {
	dir string
	max int64 // total size bound; 0: no spooling

	ctx    context.Context // ends downloads at close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	used   int64 // sizes of the spools in m
	m      map[spoolKey]*spool
	closed bool
}

// spool is the copy of one blob, filled from its start by a download.
type spool struct {
	key  spoolKey
	size int64
	f    *os.File
	idle *time.Timer // drops the spool when nobody has read it for spoolIdle

	// Under spools.mu:
	readers  int       // reads holding the spool
	lastRead time.Time // for eviction, least recently read first

	mu      sync.Mutex
	have    int64         // bytes in f, from the start
	err     error         // why the last download stopped short
	running bool          // a download is filling f
	changed chan struct{} // closed, and replaced, when the above change
}

func newSpools(dir string, max int64) *spools {
	ctx, cancel := context.WithCancel(context.Background())
	return &spools{dir: dir, max: max, ctx: ctx, cancel: cancel, m: map[spoolKey]*spool{}}
}

// get returns the spool of key, held for a read (release it), or nil.
func (s *spools) get(key spoolKey) *spool {
	s.mu.Lock()
	defer s.mu.Unlock()
	sp := s.m[key]
	if sp != nil {
		sp.readers++
	}
	return sp
}

// create returns the spool of key, made empty if there was none, held for
// a read; nil if spooling is off, or the blob does not fit in the bound
// beside the spools in use.
func (s *spools) create(ctx context.Context, key spoolKey, size int64) *spool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sp := s.m[key]; sp != nil {
		sp.readers++
		return sp
	}
	if s.closed || s.max == 0 || size > s.max || !s.makeRoom(size) {
		return nil
	}
	f, err := s.tempFile()
	if err != nil {
		log.G(ctx).WithError(err).Warn("cannot make a spool file; reading windows out of whole-blob answers")
		return nil
	}
	sp := &spool{key: key, size: size, f: f, readers: 1, lastRead: time.Now(), changed: make(chan struct{})}
	sp.idle = time.AfterFunc(spoolIdle, func() { s.expire(sp) })
	s.m[key] = sp
	s.used += size
	return sp
}

func (s *spools) tempFile() (*os.File, error) {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(s.dir, "blob-*.spool")
	if err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// makeRoom drops spools nobody uses, least recently read first, until size
// more bytes fit. Called with s.mu held.
func (s *spools) makeRoom(size int64) bool {
	if s.used+size <= s.max {
		return true
	}
	var idle []*spool
	for _, sp := range s.m {
		if sp.readers == 0 && sp.settled() {
			idle = append(idle, sp)
		}
	}
	slices.SortFunc(idle, func(a, b *spool) int { return a.lastRead.Compare(b.lastRead) })
	for _, sp := range idle {
		if s.used+size <= s.max {
			break
		}
		s.drop(sp)
	}
	return s.used+size <= s.max
}

// drop removes sp, which nobody uses (readers 0, settled). Called with s.mu
// held.
func (s *spools) drop(sp *spool) {
	sp.idle.Stop()
	delete(s.m, sp.key)
	s.used -= sp.size
	sp.f.Close()
}

// release ends a read of sp.
func (s *spools) release(sp *spool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sp.readers--
	sp.lastRead = time.Now()
	sp.idle.Reset(spoolIdle)
}

// expire drops sp if nobody has used it since its idle timer was set.
func (s *spools) expire(sp *spool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m[sp.key] == sp && sp.readers == 0 && sp.settled() {
		s.drop(sp)
	}
}

// close stops the downloads, waits for them and drops every spool. Reads
// that still hold a spool fail.
func (s *spools) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sp := range s.m {
		s.drop(sp)
	}
}

// settled reports whether no download will write to sp's file again: none
// runs, or the one that runs has written the whole blob.
func (sp *spool) settled() bool {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return !sp.running || sp.have == sp.size
}

// notify wakes the waiters. Called with sp.mu held.
func (sp *spool) notify() {
	close(sp.changed)
	sp.changed = make(chan struct{})
}

// start starts a download into sp unless one runs or sp is full, using
// first (a whole-blob answer, whose body the download then owns) if given.
func (s *spools) start(ctx context.Context, sp *spool, b *Blob, first *http.Response) {
	s.mu.Lock()
	sp.mu.Lock()
	if s.closed || sp.running || sp.have == sp.size {
		sp.mu.Unlock()
		s.mu.Unlock()
		if first != nil {
			first.Body.Close()
		}
		return
	}
	sp.running, sp.err = true, nil
	sp.notify()
	sp.mu.Unlock()
	s.wg.Add(1) // under s.mu: never after close's Wait has begun
	s.mu.Unlock()
	ctx = log.WithLogger(s.ctx, log.G(ctx))
	go func() {
		defer s.wg.Done()
		err := b.again(ctx, func() error {
			resp, handed := first, first != nil
			first = nil
			if resp == nil {
				var err error
				if resp, err = b.fetch(ctx, ""); err != nil {
					return err
				}
			}
			// The first answer was asked for by a reader, with its
			// context: Close must stop it too, and the reader's giving up
			// must not end the download.
			stop := context.AfterFunc(ctx, func() { resp.Body.Close() })
			defer stop()
			defer resp.Body.Close()
			err := sp.fill(b, resp)
			var e *Error
			if handed && ctx.Err() == nil && errors.As(err, &e) && e.broken &&
				(errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
				e.temporary = true // ask again, with the spool's context
			}
			return err
		})
		sp.mu.Lock()
		sp.running, sp.err = false, err
		sp.notify()
		sp.mu.Unlock()
		sp.idle.Reset(spoolIdle)
		if err != nil && !errdefs.IsCanceled(err) {
			log.G(ctx).WithError(err).Warn("spooling a whole blob failed")
		}
	}()
}

// fill writes the whole-blob answer resp into sp from where sp has got to.
func (sp *spool) fill(b *Blob, resp *http.Response) error {
	host := resp.Request.URL.Host
	const rng = "whole blob"
	if resp.StatusCode != http.StatusOK {
		return b.mismatch(host, rng, resp.Header.Get("Content-Range"))
	}
	if resp.ContentLength >= 0 && resp.ContentLength != sp.size {
		return b.contentError(host, rng, errdefs.ErrDataLoss, false,
			"registry sent %d bytes for a blob of %d", resp.ContentLength, sp.size)
	}
	sp.mu.Lock()
	pos := sp.have
	sp.mu.Unlock()
	if n, err := io.CopyN(io.Discard, resp.Body, pos); err != nil {
		return b.bodyError(host, rng, err, n, pos)
	}
	buf := make([]byte, min(spoolBuf, sp.size-pos))
	for pos < sp.size {
		n, err := io.ReadAtLeast(resp.Body, buf[:min(int64(len(buf)), sp.size-pos)], 1)
		if n > 0 {
			if _, werr := sp.f.WriteAt(buf[:n], pos); werr != nil {
				return b.contentError(host, rng, errdefs.ErrUnavailable, false, "spool file: %w", werr)
			}
			pos += int64(n)
			sp.mu.Lock()
			sp.have = pos
			sp.notify()
			sp.mu.Unlock()
		}
		if err != nil && pos < sp.size {
			return b.bodyError(host, rng, err, pos, sp.size)
		}
	}
	if n, _ := io.CopyN(io.Discard, resp.Body, 1); n > 0 {
		return b.contentError(host, rng, errdefs.ErrDataLoss, false, "registry sent more than the blob's %d bytes", sp.size)
	}
	return nil
}

// readAt fills p from sp at off, waiting for the bytes to arrive and
// reporting them to progress (if not nil) as they do. A download that
// stopped short is started again, once per read.
func (s *spools) readAt(ctx context.Context, sp *spool, b *Blob, p []byte, off int64, progress func(int)) error {
	got, restarted := 0, false
	for got < len(p) {
		sp.mu.Lock()
		have, err, running, changed := sp.have, sp.err, sp.running, sp.changed
		sp.mu.Unlock()
		if avail := min(have-off, int64(len(p))); avail > int64(got) && (progress != nil || avail == int64(len(p))) {
			if _, rerr := sp.f.ReadAt(p[got:avail], off+int64(got)); rerr != nil {
				return fmt.Errorf("blob %s: spool file: %w: %w", b.dgst, rerr, errdefs.ErrUnavailable)
			}
			got = int(avail)
			if progress != nil {
				progress(got)
			}
			continue
		}
		if !running {
			if s.ctx.Err() != nil {
				return b.closedError()
			}
			if restarted {
				return err
			}
			s.start(ctx, sp, b, nil)
			restarted = true
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
	return nil
}

// spooled returns the spool to read b from, held for the read (release
// it): the one b has, or a new one being filled when the host b is read
// from ignores ranges; nil to read from the network.
func (b *Blob) spooled(ctx context.Context) *spool {
	key := b.spoolKey()
	if sp := b.r.spools.get(key); sp != nil {
		return sp
	}
	if !b.r.state(b.endpoint()).noRanges.Load() {
		return nil
	}
	sp := b.r.spools.create(ctx, key, b.size)
	if sp != nil {
		b.r.spools.start(ctx, sp, b, nil)
	}
	return sp
}

// spoolAnswer hands resp, a whole-blob answer, to b's spool and returns
// the spool, held; nil (resp untouched) when b cannot be spooled, with an
// error if that is because the Resolver is closed.
func (b *Blob) spoolAnswer(ctx context.Context, resp *http.Response) (*spool, error) {
	sp := b.r.spools.create(ctx, b.spoolKey(), b.size)
	if sp != nil {
		b.r.spools.start(ctx, sp, b, resp)
	} else if b.r.closed() {
		return nil, b.closedError()
	}
	return sp, nil
}

// readFromSpool reads s out of sp, which it releases, as readRange reads
// it out of an answer.
func (b *Blob) readFromSpool(ctx context.Context, sp *spool, s *span) error {
	defer b.r.spools.release(sp)
	if s.buf == nil {
		s.buf = make([]byte, s.end-s.off)
	}
	var progress func(int)
	if s.progress != nil {
		progress = func(n int) {
			s.got = n
			s.progress(n)
		}
	}
	return b.r.spools.readAt(ctx, sp, b, s.buf, s.off, progress)
}

func (b *Blob) spoolKey() spoolKey {
	return spoolKey{registry: b.registry, repo: b.repo, dgst: b.dgst}
}
