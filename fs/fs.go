// Package fs serves eStargz layers as read-only FUSE filesystems.
//
// A FileSystem mounts one layer per mountpoint. At mount it reads the layer's
// table of contents (TOC) from the end of the blob, checks it against the TOC
// digest the image manifest carries, and builds the directory tree from it;
// no file content is fetched. A read fetches only the chunks that cover it,
// verifies each against its digest in the TOC and keeps it in a Cache shared
// by all layers. The tree is presented the way overlayfs expects lower layers:
// whiteouts as 0:0 character devices, opaque directories with the
// trusted.overlay.opaque xattr.
//
// The package owns the FUSE servers and the background resolution of layers;
// it does not know about registries (see Opener) or about on-disk caches (see
// Cache).
package fs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/hanwen/go-fuse/v2/fuse"
	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sync/semaphore"
	"golang.org/x/sync/singleflight"
)

// Labels of a layer snapshot that Mount and Check read.
const (
	// LabelImageRef names the image the layer belongs to; it says where to fetch the blob.
	LabelImageRef = "containerd.io/snapshot/cri.image-ref"
	// LabelLayerDigest is the digest of the (compressed) layer blob.
	LabelLayerDigest = "containerd.io/snapshot/cri.layer-digest"
	// LabelImageLayers lists, comma separated, the digests of this and the following layers.
	LabelImageLayers = "containerd.io/snapshot/cri.image-layers"
	// LabelTOCDigest is the digest of the layer's uncompressed TOC JSON.
	LabelTOCDigest = estargz.TOCJSONDigestAnnotation
)

// Blob is random access to one layer blob in a registry.
type Blob interface {
	// Size is the size of the blob in bytes.
	Size() int64
	// ReadAt reads len(p) bytes at off. It returns exactly len(p) or an error.
	// It is called concurrently.
	ReadAt(ctx context.Context, p []byte, off int64) (int, error)
}

// Opener opens layer blobs.
type Opener interface {
	// Open returns the blob and its last min(tail, size) bytes, fetched in one round trip.
	Open(ctx context.Context, ref string, dgst digest.Digest, tail int64) (Blob, []byte, error)
}

// Cache keeps decompressed chunks of file content, keyed by the digest of the
// uncompressed chunk, so one cache serves every layer holding the same chunk.
//
// The FileSystem treats a Cache as untrusted storage: every hit is verified
// against its key before it is served, and a mismatch is a miss. A Cache may
// therefore lose, truncate or drop entries at any time. Methods are called
// concurrently.
type Cache interface {
	// Get copies the entry stored under key into p and returns its length.
	// ok is false if there is no such entry or it does not fit in p.
	Get(key digest.Digest, p []byte) (n int, ok bool)
	// Put stores data under key. It must not retain data after returning.
	Put(key digest.Digest, data []byte) error
}

// FileSystem mounts eStargz layers. It is safe for concurrent use. Close
// unmounts everything it mounted and stops its background work.
type FileSystem struct {
	root   string
	opener Opener
	tocs   *tocStore
	cfg    config
	caps   caps
	mem    *memCache
	demand *demand
	idle   *idleSlots // see WithBackgroundFetchConcurrency
	clock  clock
	// policies decide what to fetch ahead of readers (policies.go).
	policies []Policy

	// life is the daemon-lifetime context of background work and shared
	// fetches; Close cancels it and waits for work's goroutines.
	life   context.Context
	cancel context.CancelFunc
	work   owner
	sem    chan struct{} // bounds background resolutions
	// parsing bounds the JSON of the TOCs being decoded at once, all
	// layers together, to twice the largest a TOC may have: what parsing
	// takes, whatever the number of layers resolved at once.
	parsing *semaphore.Weighted

	resolving  singleflight.Group
	images     images
	assemblies assemblies // whole-file entries being prepared

	panics atomic.Int64 // recovered, see guard.go
	stats  stats        // see stats.go

	mu       sync.Mutex
	closed   bool
	resolved map[digest.Digest]*source  // opened and parsed, verified or not
	pending  map[digest.Digest]struct{} // queued for background resolution
	mounts   map[string]*mount          // by mountpoint
	mounted  chan struct{}              // closed, and replaced, when a mount is added

	// Verification (see verify.go).
	spoolDir      string        // this FileSystem's, under root/spool
	spoolLock     *os.File      // holds spoolDir's lock until Close
	verifySem     chan struct{} // bounds verifications running at once
	spoolq        spoolQueue
	spoolBudget   spoolBudget
	verifyGen     uint64        // under mu: moves on with each verdict
	verifyChanged chan struct{} // under mu: closed, and replaced, when verifyGen moves
}

// mount is one mounted layer. server is nil while the mount is being set up.
type mount struct {
	layer  *layer
	server *fuse.Server
}

// New returns a FileSystem that reads blobs through opener. root is the
// directory of its state, created if missing: the TOC of every layer it
// mounts is stored under root/toc, keyed by layer digest, until the layer
// is unmounted, so that with a SizedOpener a layer mounted before is
// mounted again without the network (after a restart or a reboot); what
// verification found of layers is kept under root/verified, so that a
// layer is verified once, whichever process mounts it and however often;
// and the blobs of layers waiting for verification are spooled under
// root/spool. Several FileSystems, in one process or several, may share
// root.
func New(root string, opener Opener, opts ...Option) (*FileSystem, error) {
	if opener == nil {
		return nil, fmt.Errorf("fs: nil opener: %w", errdefs.ErrInvalidArgument)
	}
	cfg := defaultConfig()
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	tocs := &tocStore{dir: filepath.Join(root, "toc")}
	if err := os.MkdirAll(tocs.dir, 0o700); err != nil {
		return nil, fmt.Errorf("fs: %w", err)
	}
	spools, spoolLock, err := prepareVerifyDirs(root)
	if err != nil {
		return nil, fmt.Errorf("fs: %w", err)
	}
	life, cancel := context.WithCancel(context.Background())
	f := &FileSystem{
		root:     root,
		opener:   opener,
		tocs:     tocs,
		cfg:      cfg,
		caps:     capsOf(opener, cfg.cache),
		mem:      newMemCache(cfg.memCacheSize),
		demand:   newDemand(cfg.clock),
		clock:    cfg.clock,
		life:     life,
		cancel:   cancel,
		sem:      make(chan struct{}, cfg.resolveConcurrency),
		parsing:  semaphore.NewWeighted(2 * cfg.limits.TOCSize),
		resolved: map[digest.Digest]*source{},
		pending:  map[digest.Digest]struct{}{},
		mounts:   map[string]*mount{},
		mounted:  make(chan struct{}),

		spoolDir:      spools,
		spoolLock:     spoolLock,
		verifySem:     make(chan struct{}, cfg.verifyConcurrency),
		spoolq:        spoolQueue{ch: make(chan spoolWrite, 64)},
		spoolBudget:   spoolBudget{max: cfg.spoolSize},
		verifyGen:     1,
		verifyChanged: make(chan struct{}),
	}
	f.work = owner{f: f, ctx: life}
	f.idle = newIdleSlots(f.demand, cfg.backgroundConcurrency)
	f.policies = append(f.defaultPolicies(), cfg.policies...)
	if cfg.verify != VerifyOff {
		f.work.spawn("spool writes", f.writeSpools)
	}
	return f, nil
}

// Mount mounts the layer the labels name at mountpoint. The error, if any,
// says why the layer cannot be served lazily; its errdefs class is
// InvalidArgument for missing labels, FailedPrecondition for a layer without
// a usable TOC digest, NotImplemented for a blob that is not eStargz, DataLoss
// for a TOC that does not match its digest, AlreadyExists for a busy
// mountpoint, or the class of the registry error. Nothing is left mounted
// after an error.
func (f *FileSystem) Mount(ctx context.Context, mountpoint string, labels map[string]string) (retErr error) {
	ref, dgst, tocDgst, err := parseLabels(labels)
	if err != nil {
		return err
	}
	if tocDgst == "" && !f.cfg.allowUnverified {
		return fmt.Errorf("layer %s has no TOC digest annotation: %w", dgst, errdefs.ErrFailedPrecondition)
	}
	if err := f.reserve(mountpoint); err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			f.release(mountpoint)
		}
	}()
	f.resolveImage(ctx, ref, dgst, labels[LabelImageLayers])
	f.images.note(dgst, labels[LabelImageLayers])

	l, err := f.layerFor(ctx, ref, dgst, tocDgst)
	if err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			l.stop()
		}
	}()
	if err := f.attachVerification(ctx, l, labels); err != nil {
		return err
	}
	// The container that will read the layer starts soon.
	f.demand.touch()
	l.start(ctx, labels)
	server, err := f.serve(mountpoint, l)
	if err != nil {
		return fmt.Errorf("layer %s: mount %s: %w", dgst, mountpoint, err)
	}
	f.mu.Lock()
	closed := f.closed
	if !closed {
		f.mounts[mountpoint] = &mount{layer: l, server: server}
		close(f.mounted)
		f.mounted = make(chan struct{})
		f.verificationChangedLocked() // one more layer to report
	}
	f.mu.Unlock()
	if closed {
		// Close ran while this mount was set up and could not see it.
		return errors.Join(fmt.Errorf("fs closed: %w", errdefs.ErrUnavailable), server.Unmount())
	}
	f.storeTOC(ctx, l.src)
	log.G(ctx).WithFields(log.Fields{
		"layer": dgst, "mountpoint": mountpoint, "verified": l.verified,
		"toc_bytes":  l.src.blob.Size() - l.src.payloadEnd, // footer included
		"toc_stored": l.src.stored,
	}).Info("layer mounted")
	return nil
}

// Check reports whether the layer at mountpoint is still served and is the
// layer the labels name. It returns an error of class NotFound for a
// mountpoint it does not serve.
func (f *FileSystem) Check(ctx context.Context, mountpoint string, labels map[string]string) error {
	f.mu.Lock()
	m := f.mounts[mountpoint]
	f.mu.Unlock()
	if m == nil || m.server == nil {
		return fmt.Errorf("mountpoint %s: %w", mountpoint, errdefs.ErrNotFound)
	}
	if d := labels[LabelLayerDigest]; d != "" && d != m.layer.src.dgst.String() {
		return fmt.Errorf("mountpoint %s serves layer %s, not %s: %w", mountpoint, m.layer.src.dgst, d, errdefs.ErrFailedPrecondition)
	}
	if d := labels[LabelTOCDigest]; d != "" && d != m.layer.tocDigest.String() {
		return fmt.Errorf("mountpoint %s serves TOC %q, not %s: %w", mountpoint, m.layer.tocDigest, d, errdefs.ErrFailedPrecondition)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(mountpoint, &st); err != nil {
		return fmt.Errorf("mountpoint %s: %v: %w", mountpoint, err, errdefs.ErrUnavailable)
	}
	return nil
}

// Layer returns the view of the layer mounted at mountpoint, the one its
// policies have (view.go): its files and their chunks, what is cached,
// reads and fetches. It returns an error of class NotFound for a
// mountpoint the FileSystem does not serve. The view does nothing useful
// once the layer is unmounted.
func (f *FileSystem) Layer(mountpoint string) (*Layer, error) {
	f.mu.Lock()
	m := f.mounts[mountpoint]
	f.mu.Unlock()
	if m == nil || m.server == nil {
		return nil, fmt.Errorf("mountpoint %s: %w", mountpoint, errdefs.ErrNotFound)
	}
	return m.layer.view, nil
}

// Unmount unmounts the layer at mountpoint. It returns an error of class
// NotFound for a mountpoint it does not serve; after any other error the
// layer stays mounted and Unmount may be retried.
func (f *FileSystem) Unmount(ctx context.Context, mountpoint string) error {
	f.mu.Lock()
	m := f.mounts[mountpoint]
	f.mu.Unlock()
	if m == nil || m.server == nil {
		return fmt.Errorf("mountpoint %s: %w", mountpoint, errdefs.ErrNotFound)
	}
	if err := m.server.Unmount(); err != nil {
		return fmt.Errorf("unmount %s: %w", mountpoint, err)
	}
	m.layer.stop()
	f.mu.Lock()
	delete(f.mounts, mountpoint)
	unused := f.forgetLocked(m.layer.src.dgst)
	// The last mount of this source: no mount left to verify the blob for.
	last := unused || f.resolved[m.layer.src.dgst] != m.layer.src
	f.mu.Unlock()
	if unused {
		// The layer's snapshot is being removed: its TOC is not needed
		// to mount it again.
		f.tocs.remove(m.layer.src.dgst)
	}
	if c := m.layer.src.check.Load(); c != nil && last {
		f.dropSpool(c)
	}
	log.G(ctx).WithFields(log.Fields{"layer": m.layer.src.dgst, "mountpoint": mountpoint}).Info("layer unmounted")
	return nil
}

// Close stops background work and unmounts every layer. The FileSystem
// cannot be used afterwards.
func (f *FileSystem) Close() error {
	f.mu.Lock()
	f.closed = true
	mounts := f.mounts
	f.mounts = map[string]*mount{}
	f.mu.Unlock()
	f.cancel()
	f.work.stop()
	var errs []error
	for mp, m := range mounts {
		if m.server == nil {
			continue
		}
		if c := m.layer.src.check.Load(); c != nil {
			f.dropSpool(c)
		}
		if err := m.server.Unmount(); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
		}
	}
	if err := os.RemoveAll(f.spoolDir); err != nil {
		errs = append(errs, fmt.Errorf("remove spools: %w", err))
	}
	f.spoolLock.Close()
	return errors.Join(errs...)
}

// reserve claims mountpoint so that concurrent Mounts cannot both use it.
func (f *FileSystem) reserve(mountpoint string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return fmt.Errorf("fs closed: %w", errdefs.ErrUnavailable)
	}
	if _, ok := f.mounts[mountpoint]; ok {
		return fmt.Errorf("mountpoint %s: %w", mountpoint, errdefs.ErrAlreadyExists)
	}
	f.mounts[mountpoint] = &mount{}
	return nil
}

func (f *FileSystem) release(mountpoint string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if m, ok := f.mounts[mountpoint]; ok && m.server == nil {
		delete(f.mounts, mountpoint)
	}
}

// forgetLocked drops the resolved source of dgst unless a mount still uses
// it, and reports whether it did.
func (f *FileSystem) forgetLocked(dgst digest.Digest) bool {
	for _, m := range f.mounts {
		if m.layer != nil && m.layer.src.dgst == dgst {
			return false
		}
	}
	delete(f.resolved, dgst)
	return true
}

// layerFor resolves layer dgst and checks its TOC against tocDgst. A
// stored TOC that does not match is removed and the TOC fetched again: the
// registry may hold the layer the labels mean where a stale file did not.
func (f *FileSystem) layerFor(ctx context.Context, ref string, dgst, tocDgst digest.Digest) (*layer, error) {
	src, err := f.resolve(ctx, ref, dgst)
	if err != nil {
		return nil, err
	}
	l, err := f.newLayer(ctx, src, tocDgst)
	if err != nil && src.stored && errdefs.IsDataLoss(err) {
		f.tocs.remove(dgst)
		if src, err = f.resolve(ctx, ref, dgst); err != nil {
			return nil, err
		}
		l, err = f.newLayer(ctx, src, tocDgst)
	}
	return l, err
}

func parseLabels(labels map[string]string) (ref string, dgst, toc digest.Digest, err error) {
	ref = labels[LabelImageRef]
	if ref == "" {
		return "", "", "", fmt.Errorf("label %s missing: %w", LabelImageRef, errdefs.ErrInvalidArgument)
	}
	dgst, err = digest.Parse(labels[LabelLayerDigest])
	if err != nil {
		return "", "", "", fmt.Errorf("label %s: %v: %w", LabelLayerDigest, err, errdefs.ErrInvalidArgument)
	}
	if s := labels[LabelTOCDigest]; s != "" {
		toc, err = digest.Parse(s)
		if err != nil {
			return "", "", "", fmt.Errorf("layer %s: label %s: %v: %w", dgst, LabelTOCDigest, err, errdefs.ErrInvalidArgument)
		}
	}
	return ref, dgst, toc, nil
}
