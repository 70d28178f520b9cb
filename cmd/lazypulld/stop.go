package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/config"
	"github.com/lazypull/lazypull/dataplane"
)

// stopTimeout bounds how long --stop-data-planes waits for a data plane
// to unmount its layers and exit before it kills it.
const stopTimeout = 30 * time.Second

// stopDataPlanes is `lazypulld --stop-data-planes`: for uninstalling and
// for tests. With the daemon stopped (it refuses to run while the daemon
// holds the root), it asks every data plane of the root to unmount its
// layers and exit, kills those that do not within stopTimeout, and
// detaches whatever lazypull FUSE mount is left under the root. Layers in
// use by containers cannot be unmounted: they are detached, and their
// readers get errors. The snapshots stay; a daemon started afterwards
// mounts their layers again.
func stopDataPlanes(cfg *config.Config, out io.Writer) error {
	if _, err := os.Stat(cfg.Root); errors.Is(err, os.ErrNotExist) {
		return nil // nothing ever ran there
	}
	lock, err := lockRoot(cfg.Root)
	if err != nil {
		return err
	}
	defer lock.release()
	dir := filepath.Join(cfg.Root, planesDir)
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var errs []error
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		if err := stopPlane(filepath.Join(dir, e.Name()), out); err != nil {
			errs = append(errs, err)
		}
	}
	n, err := detachLayers(cfg.Root)
	if err != nil {
		errs = append(errs, err)
	}
	if n > 0 {
		fmt.Fprintf(out, "detached %d layer mounts left under %s\n", n, cfg.Root)
	}
	return errors.Join(errs...)
}

// stopPlane stops the data plane in dir and removes dir.
func stopPlane(dir string, out io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	c := dataplane.NewClient(filepath.Join(dir, planeSocket))
	defer c.Close()
	pl, err := connect(ctx, filepath.Base(dir), dir, c)
	if err != nil {
		// Not running: what it left is removed.
		return os.RemoveAll(dir)
	}
	defer pl.watch.close()
	mounts, _ := c.Mounts(ctx)
	if err := c.Shutdown(ctx, true); err != nil {
		fmt.Fprintf(out, "data plane %d: %v\n", pl.info.PID, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- pl.watch.wait() }()
	select {
	case <-exited:
	case <-ctx.Done():
		_ = unix.Kill(pl.info.PID, unix.SIGKILL)
		<-exited
		fmt.Fprintf(out, "data plane %d did not exit within %v; killed it\n", pl.info.PID, stopTimeout)
	}
	pl.watch.reap()
	fmt.Fprintf(out, "stopped data plane %d (lazypulld %s), which served %d layers\n", pl.info.PID, pl.info.Version, len(mounts))
	return os.RemoveAll(dir)
}

// detachLayers detaches every lazypull FUSE mount under root and returns
// how many there were.
func detachLayers(root string) (int, error) {
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(root))
	if err != nil {
		return 0, err
	}
	var errs []error
	n := 0
	for _, m := range infos {
		if m.FSType != "fuse.lazypull" && !strings.HasPrefix(m.Source, "lazypull:") {
			continue
		}
		if err := unix.Unmount(m.Mountpoint, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("detach %s: %w", m.Mountpoint, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}
