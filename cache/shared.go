package cache

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// shareTimeout bounds how long NewDir waits for another Dir to finish
// cleaning up the directory (which it does holding the lock exclusively).
const shareTimeout = 10 * time.Second

// tmpDir is a Dir's own directory of entries being written, under
// <root>/tmp. The Dir holds an exclusive flock on it for its life, so
// that another Dir can tell it from one that a crash left behind.
type tmpDir struct {
	path string
	f    *os.File // holds the flock
}

func (t *tmpDir) remove() error {
	err := os.RemoveAll(t.path)
	return errors.Join(err, t.f.Close())
}

// share locks root's lock file shared, clears what crashed Dirs left in
// <root>/tmp and makes the new Dir's own temporary directory.
//
// A Dir that finds the directory unused (its exclusive lock succeeds)
// removes everything under tmp/ before it shares the lock; a Dir that
// finds it in use removes only the temporary directories whose lock it
// can take, those of Dirs that are gone.
func share(root string) (*os.File, *tmpDir, error) {
	path := filepath.Join(root, lockFile)
	lock, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("cache: %w", err)
	}
	tmp, err := shareLocked(root, lock)
	if err != nil {
		lock.Close()
		return nil, nil, err
	}
	return lock, tmp, nil
}

func shareLocked(root string, lock *os.File) (*tmpDir, error) {
	fd := int(lock.Fd())
	tmpRoot := filepath.Join(root, tmpName)
	err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
	switch {
	case err == nil:
		// Alone: whatever is in tmp/ is a crash's.
		if err := os.RemoveAll(tmpRoot); err != nil {
			return nil, fmt.Errorf("cache: %w", err)
		}
		// The conversion is not atomic: another Dir may take the lock
		// exclusively in between, and this waits for its cleanup,
		// which finds no temporary directory of this Dir yet.
		if err := unix.Flock(fd, unix.LOCK_SH); err != nil {
			return nil, fmt.Errorf("cache: lock %s: %w", lock.Name(), err)
		}
	case errors.Is(err, unix.EWOULDBLOCK):
		if err := lockShared(root, fd); err != nil {
			return nil, err
		}
		removeDeadTemps(tmpRoot)
	default:
		return nil, fmt.Errorf("cache: lock %s: %w", lock.Name(), err)
	}
	if err := os.MkdirAll(tmpRoot, 0o700); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	dir, err := os.MkdirTemp(tmpRoot, "")
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	f, err := os.Open(dir)
	if err == nil {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err != nil {
			f.Close()
		}
	}
	if err != nil {
		os.Remove(dir)
		return nil, fmt.Errorf("cache: lock %s: %w", dir, err)
	}
	return &tmpDir{path: dir, f: f}, nil
}

// lockShared takes root's lock shared, waiting while another Dir holds it
// exclusively to clean up, for at most shareTimeout: longer, it is a
// cache that does not share its directory.
func lockShared(root string, fd int) error {
	deadline := time.Now().Add(shareTimeout)
	for {
		err := unix.Flock(fd, unix.LOCK_SH|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("cache: lock %s: %w", root, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cache: %s is held exclusively by another cache: %w", root, errdefs.ErrUnavailable)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// removeDeadTemps removes the temporary directories under tmpRoot whose
// Dir is gone: those whose flock can be taken.
func removeDeadTemps(tmpRoot string) {
	ents, err := os.ReadDir(tmpRoot)
	if err != nil {
		return
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue // a file of an older layout; removed when alone
		}
		p := filepath.Join(tmpRoot, e.Name())
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
			if err := os.RemoveAll(p); err != nil {
				log.L.WithError(err).WithField("dir", p).Warn("chunk cache: remove temporary files of a cache that is gone")
			}
		}
		f.Close()
	}
}
