package fs

import (
	"context"
	"fmt"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/estargz"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	digest "github.com/opencontainers/go-digest"
)

// layer is a source being served at a mountpoint: the core of one mount.
type layer struct {
	src       *source
	fsys      *FileSystem
	view      *Layer                   // what policies see of it
	policies  atomic.Pointer[attached] // the policies' states that take its events
	tocDigest digest.Digest            // from the labels; empty if unverified
	verified  bool                     // TOC matched tocDigest
	// verifier checks chunks against the TOC's digests; nil only for an
	// unverified layer whose TOC lacks chunk digests.
	verifier estargz.TOCEntryVerifier
	flights  flights

	// ctx is the lifetime of the layer's fetches, a child of the
	// FileSystem's; stop cancels it and waits for work's goroutines.
	ctx    context.Context
	cancel context.CancelFunc
	work   owner

	reads, fetches, fetched atomic.Int64 // FUSE reads served, blob reads, bytes

	// Verification (see verify.go): what the labels expect of the layer's
	// DiffID, when it was mounted, the verdict once known (a failed layer's
	// reads fail), and the root of its tree once served.
	expect  expectation
	mounted time.Time
	verdict atomic.Pointer[verdict]
	root    atomic.Pointer[dirNode]
}

// newLayer checks src's TOC against tocDgst (when given) and returns the
// layer to serve. A TOC that does not match drops src, so that the next
// Mount fetches it again.
func (f *FileSystem) newLayer(ctx context.Context, src *source, tocDgst digest.Digest) (*layer, error) {
	l := &layer{src: src, fsys: f, tocDigest: tocDgst}
	l.view = &Layer{l: l}
	l.ctx, l.cancel = context.WithCancel(f.life)
	l.work = owner{f: f, ctx: l.logCtx(), parent: &f.work}
	if tocDgst == "" {
		v, err := src.r.Verifiers()
		if err != nil {
			log.G(ctx).WithError(err).WithField("layer", src.dgst).Warn("unverified layer has no chunk digests; serving unchecked content")
		}
		l.verifier = v
		return l, nil
	}
	if got := src.r.TOCDigest(); got != tocDgst {
		f.mu.Lock()
		if f.resolved[src.dgst] == src {
			f.forgetLocked(src.dgst)
		}
		f.mu.Unlock()
		l.cancel()
		return nil, fmt.Errorf("layer %s: TOC digest %s does not match label %s: %w", src.dgst, got, tocDgst, errdefs.ErrDataLoss)
	}
	v, err := src.r.VerifyTOC(tocDgst)
	if err != nil {
		l.cancel()
		return nil, fmt.Errorf("layer %s: TOC cannot verify chunks: %v: %w", src.dgst, err, errdefs.ErrFailedPrecondition)
	}
	l.verifier, l.verified = v, true
	return l, nil
}

// start tells the policies of the mount and, when none of them makes the
// layer local, has background verification fetch it.
func (l *layer) start(ctx context.Context, labels map[string]string) {
	l.policies.Store(&attached{})
	a := l.fsys.attach(ctx, l.view, labels)
	l.policies.Store(&a)
	cfg := &l.fsys.cfg
	if a.local || cfg.verify != VerifyBackground || l.verdict.Load() != nil {
		return
	}
	lg := log.G(ctx).WithField("layer", l.src.dgst)
	l.work.spawn("verification", func() {
		select {
		case <-l.fsys.clock.After(cfg.backgroundDelay):
			l.verifyLater(lg)
		case <-l.ctx.Done():
		}
	})
}

// whenLocal verifies the layer in the background, if that waits for the
// layer to be local.
func (l *layer) whenLocal() {
	lg := log.G(l.ctx).WithField("layer", l.src.dgst)
	l.work.spawn("verification", func() { l.verifyLater(lg) })
}

// stop cancels the layer's fetches and waits for its goroutines.
func (l *layer) stop() {
	l.cancel()
	l.work.stop()
}

// serve mounts l read-only at mountpoint.
func (f *FileSystem) serve(mountpoint string, l *layer) (*fuse.Server, error) {
	root, _ := l.src.r.Lookup("")
	entry, attr := f.cfg.entryTimeout, f.cfg.attrTimeout
	opts := &gofs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther:               true,
			FsName:                   "lazypull:" + l.src.dgst.String(),
			Name:                     "lazypull",
			Options:                  []string{"ro", "default_permissions"},
			DirectMount:              true,
			DirectMountFlags:         syscall.MS_RDONLY | syscall.MS_NOSUID | syscall.MS_NODEV,
			MaxWrite:                 1 << 20,
			EnableSymlinkCaching:     true,
			ExplicitDataCacheControl: true,
			PanicHandler:             l.panicHandler,
		},
		EntryTimeout:    &entry,
		AttrTimeout:     &attr,
		NegativeTimeout: &entry,
		RootStableAttr:  &gofs.StableAttr{Ino: 1},
		// A mode of 0000 is what the layer says, not a missing value that
		// go-fuse should replace with 0644/0755.
		NullPermissions: true,
		// Node IDs are the TOC-derived inode numbers, so that any process
		// holding the TOC can answer the kernel about nodes it already knows.
		ExternalNodeID: true,
	}
	rootNode := &dirNode{node{l: l, e: root, ino: 1}}
	l.root.Store(rootNode)
	return gofs.Mount(mountpoint, rootNode, opts)
}

// chunk is one compressed piece of a file: ChunkSize bytes at ChunkOffset of
// the file, decompressed from the gzip member at [start, end) of the blob
// after skipping inner bytes. idx is its place in the layer's chunkTable.
type chunk struct {
	e          *estargz.TOCEntry
	off, size  int64
	start, end int64
	inner      int64
	idx        int
}

// chunks returns the chunks of e covering [off, end) of the file.
func (l *layer) chunks(e *estargz.TOCEntry, off, end int64) ([]chunk, error) {
	var cs []chunk
	for off < end {
		ce, ok := l.src.r.ChunkEntryForOffset(e.Name, off)
		if !ok || ce.ChunkSize <= 0 {
			return nil, fmt.Errorf("no chunk at offset %d: %w", off, errdefs.ErrDataLoss)
		}
		c := chunk{
			e: ce, off: ce.ChunkOffset, size: ce.ChunkSize,
			start: ce.Offset, end: min(ce.NextOffset(), l.src.payloadEnd), inner: ce.InnerOffset,
			idx: l.src.chunks.index(ce),
		}
		// Parse checked the chunks; a chunk that does not cover off would
		// make this loop run for ever.
		if c.end <= c.start || c.off > off || c.off+c.size <= off {
			return nil, fmt.Errorf("malformed chunk at offset %d: %w", off, errdefs.ErrDataLoss)
		}
		cs = append(cs, c)
		off = c.off + c.size
	}
	return cs, nil
}

// readAt reads file e at off into p, fetching the chunks not cached: the
// read of a reader of the mount.
func (l *layer) readAt(ctx context.Context, e *estargz.TOCEntry, p []byte, off int64) (int, error) {
	return l.read(ctx, e, p, off, true)
}

// read is readAt; reader says whether the read is a reader's, which the
// policies are told of, or lazypull's own.
func (l *layer) read(ctx context.Context, e *estargz.TOCEntry, p []byte, off int64, reader bool) (int, error) {
	if off >= e.Size || len(p) == 0 {
		return 0, nil
	}
	end := min(off+int64(len(p)), e.Size)
	cs, err := l.chunks(e, off, end)
	if err != nil {
		return 0, err
	}
	var ev *ReadEvent
	if reader {
		ev = &ReadEvent{File: e.Name, Offset: off, Size: end - off, chunks: cs}
	}
	data, err := l.load(ctx, cs, ev)
	if err != nil {
		return 0, err
	}
	n := 0
	for i, c := range cs {
		lo := max(off, c.off)
		hi := min(end, c.off+c.size)
		n += copy(p[lo-off:hi-off], data[i][lo-c.off:])
	}
	return n, nil
}

// observe tells the policies of a reader's read.
func (l *layer) observe(ev *ReadEvent) {
	for _, o := range l.policies.Load().reads {
		o.Read(l.view, *ev)
	}
}

// cacheKey returns the digest a verified chunk is cached under, or "" if it
// cannot be verified and so must not be cached.
func (l *layer) cacheKey(c chunk) digest.Digest {
	if l.verifier == nil {
		return ""
	}
	s := c.e.ChunkDigest
	if s == "" && c.size == c.e.Size {
		s = c.e.Digest // a single-chunk file is verified with its file digest
	}
	d, err := digest.Parse(s)
	if err != nil {
		return ""
	}
	return d
}

// verify checks data against the chunk's digest in the TOC.
func (l *layer) verify(c chunk, data []byte) error {
	if l.verifier == nil {
		return nil
	}
	v, err := l.verifier.Verifier(c.e)
	if err != nil {
		return fmt.Errorf("chunk at %d: %v: %w", c.off, err, errdefs.ErrDataLoss)
	}
	if _, err := v.Write(data); err != nil {
		return err
	}
	if !v.Verified() {
		return fmt.Errorf("chunk at %d (blob offset %d) does not match its digest: %w", c.off, c.start, errdefs.ErrDataLoss)
	}
	return nil
}
