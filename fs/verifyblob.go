package fs

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/klauspost/compress/gzip"
	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sync/semaphore"
)

// Shape of verification's reads.
const (
	// verifyPart is the size of the requests that fetch what the spool
	// lacks.
	verifyPart = 4 << 20
	// spoolPiece is the size of a read from the spool.
	spoolPiece = 1 << 20
)

// errBadBytes: the bytes verification read are not those of the blob its
// digest names (a damaged spool or transfer). Nothing is known of the blob.
var errBadBytes = errors.New("the bytes read do not match the layer digest")

// verifyStats counts where verification read a blob from.
type verifyStats struct{ spooled, fetched int64 }

// verifyBlob reads l's blob whole, in order, from sp where it holds the
// bytes and from the registry elsewhere (writing them to sp), and checks
// it: the bytes must hash to the layer digest (else errBadBytes), and the
// tar they inflate to must hold what the mount serves (see tarCheck). The
// result has the tar's digest, the DiffID, or says how the tar and the TOC
// differ. strict fetches at full speed; otherwise each request waits for a
// background fetch slot. Verified chunks missing from the Cache are stored
// in it. Any other error means the blob could not be read.
func (l *layer) verifyBlob(ctx context.Context, sp *spool, strict bool) (*blobResult, verifyStats, error) {
	src := l.src
	if !src.dgst.Algorithm().Available() {
		return nil, verifyStats{}, fmt.Errorf("layer %s: digest algorithm unavailable: %w", src.dgst, errdefs.ErrNotImplemented)
	}
	bs := newBlobStream(ctx, l, sp, strict)
	defer bs.close()
	store := l.newChunkStore(ctx)
	defer store.close()
	compressed := src.dgst.Algorithm().Digester()
	cr := io.TeeReader(bs, compressed.Hash())
	diffID, failure := l.checkStream(cr, store.keep)
	// The verdict stands only on the blob's own bytes: read them all.
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return nil, bs.stats, fmt.Errorf("layer %s: read blob: %w", src.dgst, err)
	}
	if got := compressed.Digest(); got != src.dgst {
		return nil, bs.stats, fmt.Errorf("layer %s: %w (they hash to %s)", src.dgst, errBadBytes, got)
	}
	if failure != nil {
		return &blobResult{Failure: failure.Error()}, bs.stats, nil
	}
	return &blobResult{DiffID: diffID}, bs.stats, nil
}

// checkStream inflates the compressed blob r yields and checks its tar; it
// returns the tar's digest or how the tar is not what the mount serves.
// keep gets the verified chunks.
func (l *layer) checkStream(r io.Reader, keep func(*estargz.TOCEntry, []byte)) (digest.Digest, error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return "", fmt.Errorf("not gzip: %v", err)
	}
	defer zr.Close()
	diff := digest.Canonical.Digester()
	limit := l.src.tarLimit()
	lr := &limitReader{r: io.TeeReader(zr, diff.Hash()), n: limit}
	tc := tarCheck{r: l.src.r, entries: l.src.entries, toc: l.src.r.TOCDigest(), keep: keep}
	if err := tc.run(tar.NewReader(lr)); err != nil {
		return "", err
	}
	if _, err := io.Copy(io.Discard, lr); err != nil {
		return "", fmt.Errorf("after the tar: %v", err)
	}
	return diff.Digest(), nil
}

// tarLimit bounds the size of the layer's tar by what its TOC accounts for,
// generously: content, headers, long names and xattrs, the TOC itself (at
// most what its compressed bytes can inflate to) and the archive's end.
func (s *source) tarLimit() int64 {
	n := int64(1 << 20)
	for _, e := range s.entries {
		if e.Type == "chunk" {
			continue
		}
		meta := int64(len(e.Name) + len(e.LinkName))
		for k, v := range e.Xattrs {
			meta += int64(len(k)+len(v)) + 64
		}
		n += 3*512 + 2*meta + (e.Size+511)&^511
	}
	return n + (s.blob.Size()-s.payloadEnd)*maxInflation
}

// limitReader fails once r yielded more than n bytes.
type limitReader struct {
	r io.Reader
	n int64
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n < 0 {
		return 0, errors.New("the tar is larger than its TOC accounts for")
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

// Bounds of a chunkStore.
const (
	storeBytes   = 32 << 20 // chunks copied and waiting for the Cache
	storeWorkers = 2
)

// chunkStore stores, behind verification, the chunks it found in the tar
// (with the digests the TOC gives them) that the Cache lacks: a layer
// verified before it is mounted is then local. A few workers write them, so
// that the Cache's file writes overlap inflating and hashing.
type chunkStore struct {
	l      *layer
	ch     chan kept
	budget *semaphore.Weighted
	ctx    context.Context
	wg     sync.WaitGroup
}

type kept struct {
	c    chunk
	data []byte
}

// put stores a chunk the verification inflated in the cache. A panic
// fails this chunk alone: the worker goes on with the next.
func (s *chunkStore) put(k kept) {
	defer s.budget.Release(int64(len(k.data)))
	defer s.l.recovered("verification cache write", nil)
	if key := s.l.cacheKey(k.c); key != "" {
		if err := s.l.fsys.cfg.cache.Put(key, k.data); err == nil {
			s.l.src.chunks.setLocal(k.c.idx, true)
		}
	}
}

func (l *layer) newChunkStore(ctx context.Context) *chunkStore {
	s := &chunkStore{l: l, ch: make(chan kept), budget: semaphore.NewWeighted(storeBytes), ctx: ctx}
	if l.fsys.cfg.cache == nil {
		return s
	}
	for range storeWorkers {
		s.wg.Go(l.guard("verification cache write", func() {
			for k := range s.ch {
				s.put(k)
			}
		}))
	}
	return s
}

// keep queues chunk ce, whose content data the caller keeps, for the Cache
// if the layer needs it there.
func (s *chunkStore) keep(ce *estargz.TOCEntry, data []byte) {
	l := s.l
	i := l.src.chunks.index(ce)
	if l.fsys.cfg.cache == nil || i < 0 || l.src.chunks.isLocal(i) {
		return
	}
	c := l.src.chunks.cs[i]
	if _, has := l.probe(s.ctx, c, false, nil); has {
		return
	}
	if int64(len(data)) != c.size || s.budget.Acquire(s.ctx, c.size) != nil {
		return
	}
	s.ch <- kept{c, bytes.Clone(data)}
}

// close waits for the chunks queued to be stored.
func (s *chunkStore) close() {
	close(s.ch)
	s.wg.Wait()
}

// blobStream reads a blob in order: from its spool where the spool holds
// the bytes, and from the registry elsewhere, in parts of verifyPart
// fetched ahead of the reader, a few at once, which it writes to the spool.
// Its goroutines end with close.
type blobStream struct {
	ctx    context.Context
	cancel context.CancelFunc
	l      *layer
	sp     *spool // nil: every byte is fetched
	size   int64
	strict bool

	pos   int64   // next byte Read returns
	next  int64   // where planning goes on: the end of what ahead covers
	ahead []*part // fetches from pos on, in blob order
	cur   []byte  // bytes at pos
	buf   []byte  // for spool reads
	err   error   // sticky
	stats verifyStats
	wg    sync.WaitGroup
}

// part is one fetch of the blob.
type part struct {
	off  int64
	buf  []byte
	done chan struct{}
	err  error
}

func newBlobStream(ctx context.Context, l *layer, sp *spool, strict bool) *blobStream {
	ctx, cancel := context.WithCancel(ctx)
	return &blobStream{ctx: ctx, cancel: cancel, l: l, sp: sp, size: l.src.blob.Size(), strict: strict}
}

func (b *blobStream) close() {
	b.cancel()
	b.wg.Wait()
}

func (b *blobStream) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if len(b.cur) == 0 {
		if b.pos >= b.size {
			return 0, io.EOF
		}
		if err := b.fill(); err != nil {
			b.err = err
			return 0, err
		}
	}
	n := copy(p, b.cur)
	b.cur = b.cur[n:]
	b.pos += int64(n)
	return n, nil
}

// fill sets cur to the next bytes from pos.
func (b *blobStream) fill() error {
	b.plan()
	if len(b.ahead) > 0 && b.ahead[0].off == b.pos {
		pt := b.ahead[0]
		select {
		case <-pt.done:
		case <-b.ctx.Done():
			return b.ctx.Err()
		}
		if pt.err != nil {
			return pt.err
		}
		b.ahead = b.ahead[1:]
		b.cur = pt.buf
		b.stats.fetched += int64(len(pt.buf))
		b.plan()
		return nil
	}
	limit := b.size
	if len(b.ahead) > 0 {
		limit = b.ahead[0].off
	}
	end, held := b.sp.run(b.pos)
	if !held {
		return fmt.Errorf("verification: nothing planned at offset %d", b.pos)
	}
	n := min(end, limit, b.pos+spoolPiece) - b.pos
	if int64(cap(b.buf)) < n {
		b.buf = make([]byte, spoolPiece)
	}
	if _, err := b.sp.readAt(b.buf[:n], b.pos); err != nil {
		return fmt.Errorf("read spool: %w", err)
	}
	b.cur = b.buf[:n]
	b.stats.spooled += n
	return nil
}

// plan starts fetches of what the spool lacks from next on, keeping a few
// in flight.
func (b *blobStream) plan() {
	width := b.l.fsys.cfg.backgroundConcurrency
	if b.strict {
		width = b.l.fsys.cfg.fetchConcurrency
	}
	b.next = max(b.next, b.pos)
	for len(b.ahead) < width && b.next < b.size {
		end, held := b.size, false
		if b.sp != nil {
			end, held = b.sp.run(b.next)
		}
		if held {
			b.next = end
			continue
		}
		pt := &part{off: b.next, buf: make([]byte, min(end-b.next, verifyPart)), done: make(chan struct{})}
		b.ahead = append(b.ahead, pt)
		b.next += int64(len(pt.buf))
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			defer close(pt.done)
			defer b.l.recovered("verification fetch", func(err error) { pt.err = err })
			b.fetch(pt)
		}()
	}
}

// fetch reads part pt from the registry and writes it to the spool: as a
// reader's fetch when strict, else when a background fetch slot is free.
func (b *blobStream) fetch(pt *part) {
	l := b.l
	if b.strict {
		l.fsys.demand.begin("")
		defer l.fsys.demand.end()
	} else {
		release, ok := l.fsys.idle.acquire(l.ctx)
		if !ok {
			pt.err = l.ctx.Err()
			return
		}
		defer release()
	}
	if pt.err = b.ctx.Err(); pt.err != nil {
		return
	}
	l.fetches.Add(1)
	if _, pt.err = l.src.blob.ReadAt(b.ctx, pt.buf, pt.off); pt.err != nil {
		return
	}
	l.fetched.Add(int64(len(pt.buf)))
	if b.sp != nil {
		if err := b.sp.write(pt.buf, pt.off); err != nil {
			log.G(b.ctx).WithError(err).WithField("layer", l.src.dgst).Debug("spool write failed")
		}
	}
}
