package snapshotter

import (
	"context"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// mountUsage returns what the filesystem mounted at mountpoint holds: its
// used blocks and inodes as statfs reports them. For a layer served by
// lazypull's FUSE filesystem that is the uncompressed size of the layer's
// files and its number of entries: the space the layer takes in the chunk
// cache once fully fetched, and what an overlayfs snapshot of it would
// take. It is zero when mountpoint is not a filesystem of its own (a bind
// mount of a directory of the same filesystem, or nothing mounted), whose
// statfs would describe the whole disk.
func mountUsage(ctx context.Context, mountpoint string) snapshots.Usage {
	var st, parent unix.Stat_t
	if err := unix.Stat(mountpoint, &st); err != nil {
		log.G(ctx).WithError(err).WithField("mountpoint", mountpoint).Debug("no usage for remote layer")
		return snapshots.Usage{}
	}
	if err := unix.Stat(filepath.Dir(mountpoint), &parent); err != nil || st.Dev == parent.Dev {
		return snapshots.Usage{}
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(mountpoint, &fs); err != nil {
		log.G(ctx).WithError(err).WithField("mountpoint", mountpoint).Debug("no usage for remote layer")
		return snapshots.Usage{}
	}
	return snapshots.Usage{
		Size:   int64(fs.Blocks-fs.Bfree) * blockUnit(&fs),
		Inodes: int64(fs.Files - fs.Ffree),
	}
}

// blockUnit is the unit of a statfs block count: the fragment size, or the
// block size where a filesystem does not set it.
func blockUnit(fs *unix.Statfs_t) int64 {
	if fs.Frsize > 0 {
		return int64(fs.Frsize)
	}
	return int64(fs.Bsize)
}
