package snapshotter

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// containerd's snapshot service offers Cleanup to snapshotters that have it.
var _ snapshots.Cleaner = (*snapshotter)(nil)

// Remove removes the snapshot key and deletes its directory, unmounting its
// remote layer first. Once the snapshot is gone from the metadata store,
// failures to unmount or delete are logged, not returned: the directory is
// then an orphan that Cleanup retries.
func (s *snapshotter) Remove(ctx context.Context, key string) error {
	var id string
	if err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		id, _, err = storage.Remove(ctx, key)
		if err != nil {
			return fmt.Errorf("remove snapshot %q: %w", key, err)
		}
		return nil
	}); err != nil {
		return err
	}
	if l := s.forgetLayer(id); l != nil {
		// A re-mount may still be running; stop it before unmounting.
		l.cancel()
		<-l.ready
	}
	s.removeDir(ctx, id)
	return nil
}

// Cleanup unmounts and deletes the snapshot directories that no snapshot in
// the metadata store refers to.
func (s *snapshotter) Cleanup(ctx context.Context) error {
	var orphans []string
	// A write transaction keeps new snapshots (whose directories are made
	// inside one) out while the directories are listed.
	if err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		ids, err := idMap(ctx)
		if err != nil {
			return err
		}
		entries, err := os.ReadDir(filepath.Join(s.root, "snapshots"))
		if err != nil {
			return err
		}
		for _, e := range entries {
			if _, ok := ids[e.Name()]; !ok {
				orphans = append(orphans, e.Name())
			}
		}
		return nil
	}); err != nil {
		return err
	}
	for _, id := range orphans {
		s.removeDir(ctx, id)
	}
	return nil
}

// idMap is storage.IDMap, empty for a store no snapshot was ever created in.
func idMap(ctx context.Context) (map[string]string, error) {
	ids, err := storage.IDMap(ctx)
	if errdefs.IsNotFound(err) {
		return map[string]string{}, nil
	}
	return ids, err
}

// removeDir deletes the directory of snapshot id. Whatever is mounted on its
// layer directory is unmounted first - through the FileSystem for a remote
// layer - and the directory is kept if that fails, so that deleting can
// never reach into a mounted filesystem.
func (s *snapshotter) removeDir(ctx context.Context, id string) {
	dir, mp := s.snapshotDir(id), s.upperPath(id)
	logger := log.G(ctx).WithField("path", dir)
	if err := s.unmountLayer(ctx, id); err != nil {
		logger.WithError(err).Warn("failed to unmount remote layer; keeping snapshot directory")
		return
	}
	if err := mount.UnmountAll(mp, 0); err != nil {
		logger.WithError(err).Warn("failed to unmount snapshot directory; keeping it")
		return
	}
	if err := os.RemoveAll(dir); err != nil {
		logger.WithError(err).Warn("failed to remove snapshot directory")
	}
}

// unmountLayer unmounts the remote layer of snapshot id, if it has one and
// it is mounted.
func (s *snapshotter) unmountLayer(ctx context.Context, id string) error {
	mp := s.upperPath(id)
	if s.fs == nil || !isRemote(s.snapshotDir(id)) {
		return nil
	}
	mounted, err := isMountpoint(mp)
	if err != nil || !mounted {
		return err
	}
	return s.fs.Unmount(ctx, mp)
}

// unmountLayers unmounts every remote layer this snapshotter knows of.
func (s *snapshotter) unmountLayers(ctx context.Context) {
	s.layersMu.Lock()
	ids := make([]string, 0, len(s.layers))
	for id := range s.layers {
		ids = append(ids, id)
	}
	s.layersMu.Unlock()
	for _, id := range ids {
		if err := s.unmountLayer(ctx, id); err != nil {
			log.G(ctx).WithError(err).WithField("path", s.upperPath(id)).Warn("failed to unmount remote layer")
		}
	}
}

// isMountpoint reports whether path (clean, absolute, without symlinks) is
// a mountpoint. It reads the mount table rather than stat'ing path, which
// fails on a FUSE mount whose server is gone.
func isMountpoint(path string) (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 ...":
		// the fifth field is the mountpoint.
		fields := strings.SplitN(sc.Text(), " ", 6)
		if len(fields) > 4 && unescapeMountinfo(fields[4]) == path {
			return true, nil
		}
	}
	return false, sc.Err()
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for a space)
// in a mountinfo path.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
