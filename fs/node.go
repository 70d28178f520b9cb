package fs

import (
	"context"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/estargz"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Names with a meaning to overlayfs or eStargz rather than to the workload.
const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
	opaqueXattr    = "trusted.overlay.opaque"
	blockSize      = 4096
)

// node is an entry of the layer's tree. whiteout marks a ".wh.NAME" entry
// presented as the character device 0:0 named NAME.
type node struct {
	gofs.Inode
	l        *layer
	e        *estargz.TOCEntry
	ino      uint64
	whiteout bool
}

// dirNode is a directory, fileNode a regular file, linkNode a symlink;
// devices, fifos and whiteouts are plain nodes.
type (
	dirNode  struct{ node }
	fileNode struct {
		node
		opens opens // of handles that may be served by passthrough
	}
	linkNode struct{ node }
)

// newNode returns the node for child e of a directory, as go-fuse embeds it
// and as its common part.
func (l *layer) newNode(e *estargz.TOCEntry, whiteout bool) (gofs.InodeEmbedder, *node) {
	switch {
	case whiteout:
	case e.Type == "dir":
		d := &dirNode{}
		return d, d.init(l, e, false)
	case e.Type == "reg":
		f := &fileNode{}
		return f, f.init(l, e, false)
	case e.Type == "symlink":
		s := &linkNode{}
		return s, s.init(l, e, false)
	}
	n := &node{}
	return n, n.init(l, e, whiteout)
}

func (n *node) init(l *layer, e *estargz.TOCEntry, whiteout bool) *node {
	n.l, n.e, n.ino, n.whiteout = l, e, l.src.ino[e], whiteout
	return n
}

func (n *node) mode() uint32 {
	if n.whiteout {
		return syscall.S_IFCHR
	}
	perm := uint32(n.e.Mode) & 0o7777
	switch n.e.Type {
	case "dir":
		return syscall.S_IFDIR | perm
	case "symlink":
		return syscall.S_IFLNK | perm
	case "char":
		return syscall.S_IFCHR | perm
	case "block":
		return syscall.S_IFBLK | perm
	case "fifo":
		return syscall.S_IFIFO | perm
	}
	return syscall.S_IFREG | perm
}

func (n *node) fill(a *fuse.Attr) {
	e := n.e
	a.Ino = n.ino
	a.Mode = n.mode()
	a.Nlink = uint32(max(e.NumLink, 1))
	a.Uid, a.Gid = uint32(e.UID), uint32(e.GID)
	mtime := e.ModTime()
	a.SetTimes(&mtime, &mtime, &mtime)
	a.Blksize = blockSize
	if n.whiteout {
		a.Nlink = 1
		return
	}
	switch e.Type {
	case "reg":
		a.Size = uint64(e.Size)
	case "symlink":
		a.Size = uint64(len(e.LinkName))
	case "dir":
		a.Size = blockSize
	case "char", "block":
		a.Rdev = uint32(unix.Mkdev(uint32(e.DevMajor), uint32(e.DevMinor)))
	}
	a.Blocks = (a.Size + 511) / 512
}

var _ = (gofs.NodeGetattrer)((*node)(nil))

func (n *node) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	defer n.l.timed(opGetattr, time.Now())
	n.fill(&out.Attr)
	return 0
}

// servedXattr reports whether an xattr of the image's content is served.
// Those that tell the kernel how to treat a file are the image's to state
// only where the OCI image spec lets it: overlayfs obeys its own xattrs
// (trusted.overlay.*, or user.overlay.* on a mount with userxattr) on
// lower layers, and would merge a directory with another (redirect), take
// a file's content from another (metacopy, redirect) or hide what is
// below (opaque, whiteout) as the image says, where the spec has only the
// .wh. files, which the FileSystem turns into overlayfs's form itself.
// Nothing of the trusted namespace, which only CAP_SYS_ADMIN may set, is
// image content. Of the security namespace, the file capability is (ping
// and the like need it, and the OCI spec and container runtimes carry it);
// the others, labels of a security module (SELinux, IMA, EVM), are the
// node's to set, not the image's. Other xattrs (user.*, ACLs) are content.
func servedXattr(name string) bool {
	switch {
	case strings.HasPrefix(name, "trusted."), strings.HasPrefix(name, "user.overlay."):
		return false
	case strings.HasPrefix(name, "security."):
		return name == "security.capability"
	}
	return true
}

// dropXattrs removes from the entries the xattrs that are not served.
func dropXattrs(entries []*estargz.TOCEntry) {
	for _, e := range entries {
		for k := range e.Xattrs {
			if !servedXattr(k) {
				delete(e.Xattrs, k)
			}
		}
	}
}

// xattrs returns the entry's extended attributes, with the opaque marker of
// a directory turned into overlayfs's xattr.
func (n *node) xattrs() map[string][]byte {
	if n.whiteout || n.e.Type != "dir" {
		return n.e.Xattrs
	}
	if _, ok := n.e.LookupChild(opaqueMarker); !ok {
		return n.e.Xattrs
	}
	x := make(map[string][]byte, len(n.e.Xattrs)+1)
	for k, v := range n.e.Xattrs {
		x[k] = v
	}
	x[opaqueXattr] = []byte("y")
	return x
}

var _ = (gofs.NodeGetxattrer)((*node)(nil))

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	defer n.l.timed(opGetxattr, time.Now())
	v, ok := n.xattrs()[attr]
	if !ok {
		return 0, syscall.ENODATA
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

var _ = (gofs.NodeListxattrer)((*node)(nil))

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	defer n.l.timed(opListxattr, time.Now())
	x := n.xattrs()
	names := make([]string, 0, len(x))
	for k := range x {
		names = append(names, k)
	}
	sort.Strings(names)
	var b []byte
	for _, k := range names {
		b = append(append(b, k...), 0)
	}
	if len(dest) < len(b) {
		return uint32(len(b)), syscall.ERANGE
	}
	return uint32(copy(dest, b)), 0
}

var _ = (gofs.NodeStatfser)((*node)(nil))

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	defer n.l.timed(opStatfs, time.Now())
	out.Bsize, out.Frsize = blockSize, blockSize
	out.Blocks = uint64(n.l.src.bytes+blockSize-1) / blockSize
	out.Files = uint64(len(n.l.src.ino))
	out.NameLen = 255
	return 0
}

// child returns the entry named name in directory dir, or for a whiteout
// ".wh.NAME" the marker entry. Markers and, at the root, landmarks are hidden.
func child(dir *estargz.TOCEntry, name string, root bool) (e *estargz.TOCEntry, whiteout, ok bool) {
	if hidden(name, root) {
		return nil, false, false
	}
	if e, ok := dir.LookupChild(name); ok {
		return e, false, true
	}
	if e, ok := dir.LookupChild(whiteoutPrefix + name); ok && e.Type != "dir" {
		return e, true, true
	}
	return nil, false, false
}

func hidden(name string, root bool) bool {
	if strings.HasPrefix(name, whiteoutPrefix) {
		return true
	}
	return root && (name == estargz.PrefetchLandmark || name == estargz.NoPrefetchLandmark)
}

var _ = (gofs.NodeLookuper)((*dirNode)(nil))

func (d *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	defer d.l.timed(opLookup, time.Now())
	e, whiteout, ok := child(d.e, name, d.ino == 1)
	if !ok {
		return nil, syscall.ENOENT
	}
	embedder, n := d.l.newNode(e, whiteout)
	n.fill(&out.Attr)
	return d.NewInode(ctx, embedder, gofs.StableAttr{Mode: n.mode() & syscall.S_IFMT, Ino: n.ino}), 0
}

var _ = (gofs.NodeReaddirer)((*dirNode)(nil))

func (d *dirNode) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	defer d.l.timed(opReaddir, time.Now())
	var list []fuse.DirEntry
	d.e.ForeachChild(func(name string, e *estargz.TOCEntry) bool {
		whiteout := false
		if rest, ok := strings.CutPrefix(name, whiteoutPrefix); ok {
			if name == opaqueMarker || e.Type == "dir" {
				return true
			}
			if _, shadowed := d.e.LookupChild(rest); shadowed {
				return true
			}
			name, whiteout = rest, true
		}
		if hidden(name, d.ino == 1) && !whiteout {
			return true
		}
		n := node{l: d.l, e: e, whiteout: whiteout}
		list = append(list, fuse.DirEntry{Name: name, Mode: n.mode() & syscall.S_IFMT, Ino: d.l.src.ino[e]})
		return true
	})
	sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
	return gofs.NewListDirStream(list), 0
}

var _ = (gofs.NodeReadlinker)((*linkNode)(nil))

func (s *linkNode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	defer s.l.timed(opReadlink, time.Now())
	if s.l.failed() {
		return nil, syscall.EIO
	}
	return []byte(s.e.LinkName), 0
}

var _ = (gofs.NodeOpener)((*fileNode)(nil))

func (f *fileNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	defer f.l.timed(opOpen, time.Now())
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC) != 0 {
		return nil, 0, syscall.EROFS
	}
	if f.l.failed() {
		return nil, 0, syscall.EIO
	}
	if key, whole := f.l.passthroughKey(f.e); key != "" {
		return f.openHandle(key, whole), fuse.FOPEN_KEEP_CACHE, 0
	}
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

var _ = (gofs.NodeFlusher)((*fileNode)(nil))

// Flush answers ENOSYS, which tells the kernel that a read-only filesystem
// has nothing to flush: it stops sending FLUSH, a round trip on every close.
func (f *fileNode) Flush(ctx context.Context, fh gofs.FileHandle) syscall.Errno {
	return syscall.ENOSYS
}

var _ = (gofs.NodeReader)((*fileNode)(nil))

func (f *fileNode) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	defer f.l.timed(opRead, time.Now())
	f.l.reads.Add(1)
	if f.l.failed() {
		return nil, syscall.EIO
	}
	n, err := f.l.readAt(ctx, f.e, dest, off)
	if err != nil {
		log.G(ctx).WithError(err).WithFields(log.Fields{"layer": f.l.src.dgst, "file": f.e.Name}).Debug("read failed")
		return nil, toErrno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}
