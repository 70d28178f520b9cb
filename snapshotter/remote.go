package snapshotter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

const (
	// remoteFile, in a snapshot's directory, marks a remote snapshot and
	// holds the labels its layer is mounted with.
	remoteFile = "remote.json"
	// maxFallbackReason bounds LabelFallback's value; containerd allows
	// 4096 bytes for a label's key and value together.
	maxFallbackReason = 1024
)

// remoteLayer is a remote snapshot's mounted layer.
type remoteLayer struct {
	name   string            // snapshot name (the chainID), for errors
	labels map[string]string // what FileSystem.Mount and Check are given
	cancel context.CancelFunc
	ready  chan struct{} // closed when mounting ended; err is set before
	err    error         // why the layer is not served, nil if it is
}

// describe names the layer for people: its digest and snapshot.
func (l *remoteLayer) describe() string {
	if d := l.labels[snapshotters.TargetLayerDigestLabel]; d != "" {
		return fmt.Sprintf("layer %s (snapshot %s)", d, l.name)
	}
	return "layer of snapshot " + l.name
}

// prepareRemote is Prepare for a layer being unpacked into target; labels
// are the Prepare's snapshot labels, the ones FileSystem.Mount is given.
func (s *snapshotter) prepareRemote(ctx context.Context, key, parent, target string, labels map[string]string, opts []snapshots.Opt) ([]mount.Mount, error) {
	fb, err := s.lazyCandidate(ctx, target, parent, labels)
	if err != nil {
		return nil, err
	}
	if fb != nil {
		s.logFallback(ctx, key, target, fb.reason)
		s.observer.FellBack(fb.class)
		if s.fallbackError {
			return nil, fallbackError(target, labels, fb)
		}
		opts = append(opts, snapshots.WithLabels(map[string]string{LabelFallback: shortReason(fb.reason)}))
		return s.createSnapshot(ctx, snapshots.KindActive, key, parent, opts)
	}
	sn, err := s.create(ctx, snapshots.KindActive, key, parent, opts)
	if err != nil {
		return nil, err
	}
	mp := s.upperPath(sn.ID)
	if mountErr := s.fs.Mount(ctx, mp, labels); mountErr != nil {
		fb := mountFallback(mountErr)
		s.logFallback(ctx, key, target, fb.reason)
		s.observer.FellBack(fb.class)
		if err := mount.UnmountAll(mp, 0); err != nil {
			log.G(ctx).WithError(err).WithField("path", mp).Warn("failed to clear mountpoint after failed mount")
		}
		if s.fallbackError {
			if err := s.Remove(ctx, key); err != nil {
				log.G(ctx).WithError(err).WithField("key", key).Warn("failed to remove snapshot of a layer that may not fall back")
			}
			return nil, fallbackError(target, labels, fb)
		}
		if err := s.markFallback(ctx, key, fb.reason); err != nil {
			log.G(ctx).WithError(err).WithField("key", key).Warn("failed to label fallback snapshot")
		}
		return s.finishCreate(ctx, key, sn)
	}
	if err := s.commitRemote(ctx, sn.ID, key, target, labels); err != nil {
		return nil, err
	}
	s.observer.Mounted()
	log.G(ctx).WithFields(log.Fields{
		"key":    key,
		"target": target,
		"layer":  labels[snapshotters.TargetLayerDigestLabel],
	}).Info("layer mounted lazily")
	return nil, fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)
}

// lazyCandidate returns an error wrapping errdefs.ErrAlreadyExists if target
// is already committed on parent and bound to what the labels ask for (see
// boundTo), and otherwise why the layer cannot be served lazily (nil if it
// may be). It sets, in labels, the parent's chain ID (see chainLabels).
func (s *snapshotter) lazyCandidate(ctx context.Context, target, parent string, labels map[string]string) (*fallback, error) {
	var (
		id, reason string
		info       snapshots.Info
		exists     bool
	)
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		i, in, _, err := storage.GetInfo(ctx, target)
		switch {
		case errdefs.IsNotFound(err):
		case err != nil:
			return err
		default:
			id, info, exists = i, in, true
		}
		reason, err = chainLabels(ctx, parent, labels)
		return err
	}); err != nil {
		return nil, err
	}
	if exists {
		if info.Kind != snapshots.KindCommitted || info.Parent != parent || info.Labels[snapshots.LabelSnapshotRef] != target {
			return &fallback{FallbackSnapshotConflict, fmt.Sprintf("snapshot %s exists as %v with parent %q, not committed on %q", target, info.Kind, info.Parent, parent)}, nil
		}
		why, err := boundTo(s.snapshotDir(id), target, labels)
		if err != nil {
			return nil, err
		}
		if why != "" {
			return &fallback{FallbackSnapshotConflict, why}, nil
		}
		return nil, fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)
	}
	var missing []string
	for _, k := range []string{snapshotters.TargetRefLabel, snapshotters.TargetLayerDigestLabel} {
		if labels[k] == "" {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		return &fallback{FallbackNotAnnotated, fmt.Sprintf("no %s label: the pull was not annotated for remote snapshotters", strings.Join(missing, ", "))}, nil
	}
	if reason != "" {
		return &fallback{FallbackNoParentChain, reason}, nil
	}
	return nil, nil
}

// commitRemote commits the active snapshot key, whose layer is mounted, as
// target. On failure the active snapshot is removed (and so unmounted); an
// error wrapping errdefs.ErrAlreadyExists means another Prepare committed
// target first.
func (s *snapshotter) commitRemote(ctx context.Context, id, key, target string, labels map[string]string) error {
	l := &remoteLayer{name: target, labels: labels, cancel: func() {}, ready: make(chan struct{})}
	close(l.ready)
	usage := mountUsage(ctx, s.upperPath(id))
	err := writeRemoteFile(s.snapshotDir(id), labels)
	if err == nil {
		// Registered first so that a Remove right after the commit finds it.
		s.addLayer(id, l)
		err = s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
			// Commit replaces the labels; keep all of the Prepare's.
			_, info, _, err := storage.GetInfo(ctx, key)
			if err != nil {
				return err
			}
			// A verdict that came while the layer was being mounted.
			verdict, err := verdictLabels(s.snapshotDir(id))
			if err != nil {
				return err
			}
			_, err = storage.CommitActive(ctx, key, target, usage,
				snapshots.WithLabels(info.Labels),
				snapshots.WithLabels(map[string]string{LabelRemote: "true"}),
				snapshots.WithLabels(verdict))
			return err
		})
	}
	if err != nil {
		if uerr := s.fs.Unmount(ctx, s.upperPath(id)); uerr != nil {
			log.G(ctx).WithError(uerr).WithField("key", key).Warn("failed to unmount layer after failed commit")
		}
		if rerr := s.Remove(ctx, key); rerr != nil {
			log.G(ctx).WithError(rerr).WithField("key", key).Warn("failed to remove snapshot after failed commit")
		}
		return fmt.Errorf("commit remote snapshot %q: %w", target, err)
	}
	return nil
}

// markFallback records on the active snapshot key why its layer is not
// served lazily.
func (s *snapshotter) markFallback(ctx context.Context, key, reason string) error {
	return s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		info := snapshots.Info{Name: key, Labels: map[string]string{LabelFallback: shortReason(reason)}}
		_, err := storage.UpdateInfo(ctx, info, "labels."+LabelFallback)
		return err
	})
}

func (s *snapshotter) logFallback(ctx context.Context, key, target, reason string) {
	log.G(ctx).WithFields(log.Fields{
		"key":    key,
		"target": target,
		"reason": reason,
	}).Warn("layer cannot be served lazily; containerd will download and apply it")
}

// shortReason makes reason fit a label value.
func shortReason(reason string) string {
	reason = strings.ToValidUTF8(reason, "?")
	if len(reason) <= maxFallbackReason {
		return reason
	}
	n := maxFallbackReason - len("...")
	for n > 0 && !utf8.RuneStart(reason[n]) {
		n--
	}
	return reason[:n] + "..."
}

// checkLayers waits for the remote layers among the snapshots ids to be
// mounted and checks that they are served.
func (s *snapshotter) checkLayers(ctx context.Context, ids []string) error {
	for _, id := range ids {
		s.layersMu.Lock()
		l := s.layers[id]
		s.layersMu.Unlock()
		if l == nil {
			continue
		}
		select {
		case <-l.ready:
		case <-ctx.Done():
			return ctx.Err()
		}
		err := l.err
		if err == nil {
			err = s.fs.Check(ctx, s.upperPath(id), l.labels)
		}
		if err != nil {
			return fmt.Errorf("remote %s is not served: %v: %w", l.describe(), err, errdefs.ErrUnavailable)
		}
	}
	return nil
}

func (s *snapshotter) addLayer(id string, l *remoteLayer) {
	s.layersMu.Lock()
	defer s.layersMu.Unlock()
	s.layers[id] = l
}

func (s *snapshotter) forgetLayer(id string) *remoteLayer {
	s.layersMu.Lock()
	defer s.layersMu.Unlock()
	l := s.layers[id]
	delete(s.layers, id)
	return l
}

// restoreLayers registers the remote snapshots found under the root and
// starts re-mounting their layers in goroutines that stop when s.life ends.
func (s *snapshotter) restoreLayers(ctx context.Context) error {
	names := map[string]string{}   // id -> name of committed snapshots
	parents := map[string]string{} // id -> parent, of those with one
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		ids, err := idMap(ctx)
		if err != nil {
			return err
		}
		for id, name := range ids {
			_, info, _, err := storage.GetInfo(ctx, name)
			if err != nil {
				return err
			}
			if info.Kind == snapshots.KindCommitted {
				names[id] = name
				if info.Parent != "" {
					parents[id] = info.Parent
				}
			}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("list remote snapshots: %w", err)
	}
	for id, name := range names {
		labels, err := readRemoteFile(s.snapshotDir(id))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err == nil && labels[labelParentChainID] == "" && parents[id] != "" {
			// Mounted by a version that did not record it.
			err = s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
				_, err := chainLabels(ctx, parents[id], labels)
				return err
			})
		}
		s.startRestore(ctx, id, name, labels, err, nil, "its mount was not served when lazypulld started")
	}
	return nil
}

// Remount re-mounts, in the background, the remote layers mounted at
// mountpoints, which their FileSystem no longer serves (reason says why):
// the dead mounts are detached, the layers mounted again at the same
// places, and their snapshots get LabelRemounted. Until a layer is mounted
// again, Mounts, Prepare and View of snapshots above it wait for it.
// Mountpoints that are not remote layers of this snapshotter are ignored.
func (s *snapshotter) Remount(mountpoints []string, reason string) {
	ctx := s.life
	for _, mp := range mountpoints {
		id, ok := s.idOfMountpoint(mp)
		if !ok {
			continue
		}
		s.layersMu.Lock()
		old := s.layers[id]
		s.layersMu.Unlock()
		if old == nil {
			continue // removed meanwhile, or never committed
		}
		log.G(ctx).WithFields(log.Fields{
			"snapshot": old.name,
			"layer":    old.labels[snapshotters.TargetLayerDigestLabel],
			"reason":   reason,
		}).Warn("remote layer lost; mounting it again for new containers (containers using it now see I/O errors)")
		s.startRestore(ctx, id, old.name, old.labels, nil, old, reason)
	}
}

var _ Remounter = (*snapshotter)(nil)

// startRestore registers the remote layer of snapshot id and starts making
// sure it is served (see restore). labelsErr, if not nil, is why its labels
// could not be read; prev, if not nil, is the layer it replaces, whose
// restore must end first; why becomes LabelRemounted if a dead mount had to
// be replaced.
func (s *snapshotter) startRestore(ctx context.Context, id, name string, labels map[string]string, labelsErr error, prev *remoteLayer, why string) {
	lctx, cancel := context.WithCancel(s.life)
	l := &remoteLayer{name: name, labels: labels, cancel: cancel, ready: make(chan struct{})}
	s.layersMu.Lock()
	if s.closed || (prev != nil && s.layers[id] != prev) {
		s.layersMu.Unlock()
		cancel()
		return // closed, or removed or replaced meanwhile
	}
	s.layers[id] = l
	s.wg.Add(1)
	s.layersMu.Unlock()
	go func() {
		defer s.wg.Done()
		defer cancel()
		defer close(l.ready)
		if prev != nil {
			<-prev.ready
		}
		logger := log.G(ctx).WithFields(log.Fields{"snapshot": name, "layer": labels[snapshotters.TargetLayerDigestLabel]})
		remounted := false
		if labelsErr != nil {
			l.err = labelsErr
		} else {
			remounted, l.err = s.restore(lctx, id, l)
		}
		if l.err != nil {
			logger.WithError(l.err).Warn("remote layer not restored; snapshots above it are unavailable")
			return
		}
		if remounted {
			logger.Info("remote layer mounted again")
			s.markRemounted(lctx, name, why)
		}
	}()
}

// markRemounted records on snapshot name that its layer was mounted again.
func (s *snapshotter) markRemounted(ctx context.Context, name, why string) {
	v := shortReason(time.Now().UTC().Format(time.RFC3339) + ": " + why)
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		info := snapshots.Info{Name: name, Labels: map[string]string{LabelRemounted: v}}
		_, err := storage.UpdateInfo(ctx, info, "labels."+LabelRemounted)
		return err
	})
	if err != nil {
		log.G(ctx).WithError(err).WithField("snapshot", name).Warn("failed to label re-mounted snapshot")
	}
}

// restore makes sure the layer of snapshot id is served: a mount that
// passes FileSystem.Check is kept, anything else is unmounted and the layer
// mounted again. remounted says whether a mount that was there had to be
// replaced.
func (s *snapshotter) restore(ctx context.Context, id string, l *remoteLayer) (remounted bool, err error) {
	if s.fs == nil {
		return false, errors.New("no remote FileSystem configured")
	}
	select {
	case s.restoreSem <- struct{}{}:
		defer func() { <-s.restoreSem }()
	case <-ctx.Done():
		return false, ctx.Err()
	}
	mp := s.upperPath(id)
	mounted, err := isMountpoint(mp)
	if err != nil {
		return false, err
	}
	if mounted {
		if s.fs.Check(ctx, mp, l.labels) == nil {
			return false, nil
		}
		if err := s.fs.Unmount(ctx, mp); err != nil {
			log.G(ctx).WithError(err).WithField("path", mp).Debug("unmount of stale remote layer failed")
		}
		if err := mount.UnmountAll(mp, unix.MNT_DETACH); err != nil {
			return false, fmt.Errorf("clear stale mount: %w", err)
		}
	}
	return mounted, s.fs.Mount(ctx, mp, l.labels)
}

func isRemote(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, remoteFile))
	return err == nil
}

func writeRemoteFile(dir string, labels map[string]string) error {
	return writeJSON(filepath.Join(dir, remoteFile), labels)
}

// writeJSON replaces the file at path with v as JSON, atomically.
func writeJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func readRemoteFile(dir string) (map[string]string, error) {
	b, err := os.ReadFile(filepath.Join(dir, remoteFile))
	if err != nil {
		return nil, err
	}
	var labels map[string]string
	if err := json.Unmarshal(b, &labels); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, remoteFile), err)
	}
	return labels, nil
}
