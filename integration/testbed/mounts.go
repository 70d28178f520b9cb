package testbed

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// MountsUnder returns the mount points at or below dir, in the order
// /proc/self/mountinfo lists them (the order they were mounted in).
func MountsUnder(dir string) ([]string, error) {
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return nil, err
	}
	mps := make([]string, 0, len(infos))
	for _, m := range infos {
		mps = append(mps, m.Mountpoint)
	}
	return mps, nil
}

// UnmountUnder unmounts everything mounted at or below dir, newest first.
// A mount that stays busy is retried for a few seconds and then detached
// lazily (MNT_DETACH); that still counts as success, but a mount that cannot
// be removed at all is an error.
func UnmountUnder(dir string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		mps, err := MountsUnder(dir)
		if err != nil {
			return err
		}
		if len(mps) == 0 {
			return nil
		}
		var errs []error
		for i := len(mps) - 1; i >= 0; i-- {
			if err := unix.Unmount(mps[i], 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("unmount %s: %w", mps[i], err))
			}
		}
		if len(errs) == 0 {
			continue // re-read: stacked mounts reveal the ones below
		}
		if time.Now().After(deadline) {
			for i := len(mps) - 1; i >= 0; i-- {
				_ = unix.Unmount(mps[i], unix.MNT_DETACH)
			}
			left, err := MountsUnder(dir)
			if err != nil {
				return err
			}
			if len(left) > 0 {
				return fmt.Errorf("mounts left under %s: %s: %w", dir, strings.Join(left, ", "), errors.Join(errs...))
			}
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Mount mounts ms (as returned by a snapshotter's Mounts or View) on a new
// directory, read-only when readOnly is set, and unmounts it at cleanup.
func Mount(t T, ms []mount.Mount, readOnly bool) string {
	t.Helper()
	target := Dir(t, "mnt")
	if readOnly {
		ms = readOnlyMounts(ms)
	}
	if err := mount.All(ms, target); err != nil {
		t.Fatalf("mount %+v on %s: %v", ms, target, err)
	}
	t.Cleanup(func() {
		if err := UnmountUnder(target); err != nil {
			t.Errorf("unmount %s: %v", target, err)
		}
	})
	return target
}

// readOnlyMounts returns copies of ms with "rw" replaced by "ro".
func readOnlyMounts(ms []mount.Mount) []mount.Mount {
	out := make([]mount.Mount, len(ms))
	for i, m := range ms {
		opts := []string{"ro"}
		for _, o := range m.Options {
			if o != "rw" && o != "ro" {
				opts = append(opts, o)
			}
		}
		m.Options = opts
		out[i] = m
	}
	return out
}
