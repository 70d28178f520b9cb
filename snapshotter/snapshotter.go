package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/continuity/fs"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// defaultRestoreConcurrency bounds how many remote layers New re-mounts at
// once after a restart.
const defaultRestoreConcurrency = 8

type config struct {
	fs                 FileSystem
	restoreConcurrency int
	keepMounts         bool
	observer           Observer
	fallbackError      bool
}

// Opt configures a snapshotter created by New.
type Opt func(*config) error

// WithFileSystem enables remote snapshots: layers that Prepare is asked to
// unpack are mounted with f when their labels allow it (see the package
// doc). Without it the snapshotter is a plain overlayfs snapshotter.
func WithFileSystem(f FileSystem) Opt {
	return func(c *config) error {
		if f == nil {
			return fmt.Errorf("nil FileSystem: %w", errdefs.ErrInvalidArgument)
		}
		c.fs = f
		return nil
	}
}

// WithRestoreConcurrency bounds how many remote layers are re-mounted in
// parallel when New opens a root that already holds remote snapshots.
func WithRestoreConcurrency(n int) Opt {
	return func(c *config) error {
		if n < 1 {
			return fmt.Errorf("restore concurrency %d must be at least 1: %w", n, errdefs.ErrInvalidArgument)
		}
		c.restoreConcurrency = n
		return nil
	}
}

// WithKeepMountsOnClose makes Close leave remote layers mounted, for a
// daemon whose FUSE servers outlive it; the next New keeps every mount that
// still passes FileSystem.Check.
func WithKeepMountsOnClose() Opt {
	return func(c *config) error {
		c.keepMounts = true
		return nil
	}
}

type snapshotter struct {
	root       string
	ms         *storage.MetaStore
	fs         FileSystem
	keepMounts bool
	options    []string // appended to every overlay mount
	// observer is told what becomes of layers offered for lazy pulls;
	// fallbackError makes Prepare fail for those that fall back.
	observer      Observer
	fallbackError bool

	layersMu sync.Mutex
	layers   map[string]*remoteLayer // by snapshot id
	closed   bool                    // set by Close: no more restores

	// life is the lifetime of background restores; cancel ends it.
	life       context.Context
	cancel     context.CancelFunc
	restoreSem chan struct{} // bounds concurrent restores
	wg         sync.WaitGroup
	closeOnce  sync.Once
	closeErr   error
}

// New returns a snapshotter storing its snapshots and metadata under root
// (created with mode 0700). If root holds remote snapshots from an earlier
// run, New starts re-mounting their layers in the background and returns;
// Close stops that work and waits for it.
func New(root string, opts ...Opt) (snapshots.Snapshotter, error) {
	cfg := config{restoreConcurrency: defaultRestoreConcurrency, observer: nopObserver{}}
	for _, opt := range opts {
		if err := opt(&cfg); err != nil {
			return nil, err
		}
	}
	root, err := prepareRoot(root)
	if err != nil {
		return nil, err
	}
	ms, err := storage.NewMetaStore(filepath.Join(root, "metadata.db"))
	if err != nil {
		return nil, err
	}
	s := &snapshotter{
		root:       root,
		ms:         ms,
		fs:         cfg.fs,
		keepMounts: cfg.keepMounts,
		layers:     map[string]*remoteLayer{},
		restoreSem: make(chan struct{}, cfg.restoreConcurrency),
	}
	s.observer, s.fallbackError = cfg.observer, cfg.fallbackError
	s.options = overlayOptions("/sys/module/overlay/parameters")
	s.life, s.cancel = context.WithCancel(context.Background())
	if err := s.restoreLayers(s.life); err != nil {
		s.cancel()
		ms.Close()
		return nil, err
	}
	return s, nil
}

// prepareRoot creates root and its snapshots directory and returns root as a
// clean absolute path without symlinks, the form mount tables use.
func prepareRoot(root string) (string, error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return "", err
	}
	if err := os.Chmod(root, 0o700); err != nil {
		return "", err
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return "", err
	}
	if root, err = filepath.EvalSymlinks(abs); err != nil {
		return "", err
	}
	ok, err := fs.SupportsDType(root)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", fmt.Errorf("%s does not support d_type, which overlayfs needs: %w", root, errdefs.ErrNotImplemented)
	}
	if err := os.Mkdir(filepath.Join(root, "snapshots"), 0o700); err != nil && !os.IsExist(err) {
		return "", err
	}
	return root, nil
}

func (s *snapshotter) Stat(ctx context.Context, key string) (info snapshots.Info, err error) {
	err = s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		_, info, _, err = storage.GetInfo(ctx, key)
		return err
	})
	return info, err
}

func (s *snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (updated snapshots.Info, err error) {
	err = s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		updated, err = storage.UpdateInfo(ctx, info, fieldpaths...)
		return err
	})
	return updated, err
}

// Usage scans the upper directory of an active snapshot; committed snapshots
// report the usage recorded at Commit, remote ones that of their layer's
// filesystem (see the package doc).
func (s *snapshotter) Usage(ctx context.Context, key string) (usage snapshots.Usage, err error) {
	var (
		id   string
		info snapshots.Info
	)
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		id, info, usage, err = storage.GetInfo(ctx, key)
		return err
	}); err != nil {
		return snapshots.Usage{}, err
	}
	if info.Kind == snapshots.KindActive {
		du, err := fs.DiskUsage(ctx, s.upperPath(id))
		if err != nil {
			return snapshots.Usage{}, err
		}
		usage = snapshots.Usage(du)
	}
	return usage, nil
}

func (s *snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	return s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		var fnErr error
		err := storage.WalkInfo(ctx, func(ctx context.Context, info snapshots.Info) error {
			fnErr = fn(ctx, info)
			return fnErr
		}, filters...)
		if err != nil && fnErr == nil && errdefs.IsNotFound(err) {
			// The store creates its buckets with the first snapshot: an
			// empty store has nothing to walk, which is not an error.
			return nil
		}
		return err
	})
}

// Prepare creates an active snapshot, or serves the layer being unpacked
// remotely and returns an error wrapping errdefs.ErrAlreadyExists; see the
// package doc for the protocol.
func (s *snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	opts = append(opts[:len(opts):len(opts)], withoutOwnLabels)
	if s.fs != nil {
		var base snapshots.Info
		for _, opt := range opts {
			if err := opt(&base); err != nil {
				return nil, err
			}
		}
		if target := base.Labels[snapshots.LabelSnapshotRef]; target != "" {
			return s.prepareRemote(ctx, key, parent, target, snapshots.FilterInheritedLabels(base.Labels), opts)
		}
	}
	return s.createSnapshot(ctx, snapshots.KindActive, key, parent, opts)
}

func (s *snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.createSnapshot(ctx, snapshots.KindView, key, parent, opts)
}

// Mounts returns the mounts of an active snapshot or view. It waits for
// remote layers below it that are being re-mounted after a restart, and
// fails with errdefs.ErrUnavailable if one of them is not being served.
func (s *snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	var sn storage.Snapshot
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		sn, err = storage.GetSnapshot(ctx, key)
		return err
	}); err != nil {
		return nil, fmt.Errorf("mounts of %q: %w", key, err)
	}
	return s.mounts(ctx, sn)
}

// Commit commits the active snapshot key as name. A LabelFallback label on
// the active snapshot is kept; other labels of this package that opts set
// are dropped, as in Prepare.
func (s *snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	opts = append(opts[:len(opts):len(opts)], withoutOwnLabels)
	return s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		id, info, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return err
		}
		du, err := fs.DiskUsage(ctx, s.upperPath(id))
		if err != nil {
			return err
		}
		if reason, ok := info.Labels[LabelFallback]; ok {
			opts = append(opts, withDefaultLabel(LabelFallback, reason))
		}
		if _, err := storage.CommitActive(ctx, key, name, snapshots.Usage(du), opts...); err != nil {
			return fmt.Errorf("commit %q as %q: %w", key, name, err)
		}
		return nil
	})
}

// withDefaultLabel sets label k to v unless an earlier Opt set it.
func withDefaultLabel(k, v string) snapshots.Opt {
	return func(info *snapshots.Info) error {
		if _, ok := info.Labels[k]; ok {
			return nil
		}
		if info.Labels == nil {
			info.Labels = map[string]string{}
		}
		info.Labels[k] = v
		return nil
	}
}

// Close stops background re-mounts, unmounts remote layers (unless
// WithKeepMountsOnClose) and closes the metadata store. Later calls return
// the first call's result.
func (s *snapshotter) Close() error {
	s.closeOnce.Do(func() {
		s.layersMu.Lock()
		s.closed = true
		s.layersMu.Unlock()
		s.cancel()
		s.wg.Wait()
		if !s.keepMounts {
			s.unmountLayers(context.Background())
		}
		s.closeErr = s.ms.Close()
	})
	return s.closeErr
}

// createSnapshot creates an active snapshot or view and returns its mounts.
func (s *snapshotter) createSnapshot(ctx context.Context, kind snapshots.Kind, key, parent string, opts []snapshots.Opt) ([]mount.Mount, error) {
	sn, err := s.create(ctx, kind, key, parent, opts)
	if err != nil {
		return nil, err
	}
	return s.finishCreate(ctx, key, sn)
}

// create records a new active snapshot or view and makes its directory.
func (s *snapshotter) create(ctx context.Context, kind snapshots.Kind, key, parent string, opts []snapshots.Opt) (sn storage.Snapshot, err error) {
	err = s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		sn, err = storage.CreateSnapshot(ctx, kind, key, parent, opts...)
		if err != nil {
			return fmt.Errorf("create snapshot %q: %w", key, err)
		}
		if err := makeSnapshotDir(s.snapshotDir(sn.ID), kind); err != nil {
			s.removeDir(ctx, sn.ID)
			return err
		}
		return nil
	})
	return sn, err
}

func makeSnapshotDir(dir string, kind snapshots.Kind) error {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("snapshot directory: %w", err)
	}
	if err := os.Mkdir(filepath.Join(dir, "fs"), 0o755); err != nil {
		return err
	}
	if kind == snapshots.KindActive {
		return os.Mkdir(filepath.Join(dir, "work"), 0o711)
	}
	return nil
}

// finishCreate does what must wait for the remote layers below a new
// snapshot, outside the transaction that created it: their mounts are
// checked and the new upper directory takes the owner of the parent's root,
// as a layer applied on top of the parent would. On failure the new
// snapshot is removed again.
func (s *snapshotter) finishCreate(ctx context.Context, key string, sn storage.Snapshot) ([]mount.Mount, error) {
	m, err := s.mounts(ctx, sn)
	if err == nil && len(sn.ParentIDs) > 0 {
		err = chownLike(s.upperPath(sn.ID), s.upperPath(sn.ParentIDs[0]))
	}
	if err != nil {
		if rerr := s.Remove(ctx, key); rerr != nil {
			log.G(ctx).WithError(rerr).WithField("key", key).Warn("failed to remove snapshot after failed create")
		}
		return nil, err
	}
	return m, nil
}

func chownLike(path, like string) error {
	fi, err := os.Stat(like)
	if err != nil {
		return fmt.Errorf("stat parent: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return errors.New("stat parent: no syscall.Stat_t")
	}
	return os.Lchown(path, int(st.Uid), int(st.Gid))
}

// mounts composes the mounts of an active snapshot or view from its parent
// chain, after checking that the remote layers in the chain are served.
func (s *snapshotter) mounts(ctx context.Context, sn storage.Snapshot) ([]mount.Mount, error) {
	if err := s.checkLayers(ctx, sn.ParentIDs); err != nil {
		return nil, err
	}
	if len(sn.ParentIDs) == 0 {
		// overlayfs needs a lowerdir; a single layer is a bind mount.
		mode := "rw"
		if sn.Kind == snapshots.KindView {
			mode = "ro"
		}
		return []mount.Mount{{Type: "bind", Source: s.upperPath(sn.ID), Options: []string{mode, "rbind"}}}, nil
	}
	var options []string
	if sn.Kind == snapshots.KindActive {
		options = append(options,
			"workdir="+s.workPath(sn.ID),
			"upperdir="+s.upperPath(sn.ID),
		)
	} else if len(sn.ParentIDs) == 1 {
		return []mount.Mount{{Type: "bind", Source: s.upperPath(sn.ParentIDs[0]), Options: []string{"ro", "rbind"}}}, nil
	}
	lower := make([]string, len(sn.ParentIDs))
	for i, id := range sn.ParentIDs {
		lower[i] = s.upperPath(id)
	}
	options = append(options, "lowerdir="+strings.Join(lower, ":"))
	options = append(options, s.options...)
	return []mount.Mount{{Type: "overlay", Source: "overlay", Options: options}}, nil
}

func (s *snapshotter) snapshotDir(id string) string {
	return filepath.Join(s.root, "snapshots", id)
}

// upperPath is a snapshot's layer directory: the overlay upperdir of an
// active snapshot, and the mountpoint of a remote layer.
func (s *snapshotter) upperPath(id string) string {
	return filepath.Join(s.root, "snapshots", id, "fs")
}

func (s *snapshotter) workPath(id string) string {
	return filepath.Join(s.root, "snapshots", id, "work")
}
