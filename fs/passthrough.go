package fs

import (
	"context"
	"io"
	"os"
	"sync"
	"syscall"

	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/estargz"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	digest "github.com/opencontainers/go-digest"
)

// FileCache is a Cache whose entries are files holding exactly the entry's
// bytes. With one, FUSE passthrough serves a file whose content is one
// cached chunk straight from the entry's file, and background fetch checks
// which chunks are cached without reading them.
type FileCache interface {
	Cache
	// Open returns the entry of key opened for reading; the caller closes
	// it. The content is unverified. An error means no usable entry.
	// The file must stay readable, with the same content, for as long as it
	// is open, even if the entry is evicted or replaced meanwhile.
	Open(key digest.Digest) (*os.File, error)
}

// passthroughKey returns the cache key of e's content if e may be served by
// passthrough: passthrough is on, the Cache is a FileCache, and e's content
// is one chunk with a digest. Otherwise it returns "".
func (l *layer) passthroughKey(e *estargz.TOCEntry) digest.Digest {
	if !l.fsys.cfg.passthrough || e.Size <= 0 {
		return ""
	}
	if _, ok := l.fsys.cfg.cache.(FileCache); !ok {
		return ""
	}
	cs, err := l.chunks(e, 0, e.Size)
	if err != nil || len(cs) != 1 || cs[0].off != 0 || cs[0].size != e.Size {
		return ""
	}
	return l.cacheKey(cs[0])
}

// opens counts a file node's open handles. The kernel refuses to open an
// inode with passthrough while it is open without, and the other way
// round, so a handle asks for passthrough only when it is the only one;
// go-fuse then gives later opens the same backing file while it is in use.
type opens struct {
	mu sync.Mutex
	n  int
	// verified identifies the cache entry file last verified, so that
	// opening the same file again does not hash it again.
	verified fileID
}

// fileID identifies a file's content as long as nobody writes to it: a
// write changes the ctime, and the Cache replaces entries by rename, which
// changes the inode.
type fileID struct {
	dev, ino uint64
	size     int64
	ctime    syscall.Timespec
}

func idOf(st os.FileInfo) (fileID, bool) {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}, false
	}
	return fileID{dev: sys.Dev, ino: sys.Ino, size: st.Size(), ctime: sys.Ctim}, true
}

// ptHandle is an open file that may be served by passthrough.
type ptHandle struct {
	n *fileNode
	f *os.File // the verified cache entry, if the handle was opened alone
}

// openHandle returns the handle of a new open of n, whose content is the
// cache entry key. When no other handle is open, it opens and verifies the
// entry, here rather than in PassthroughFd, which go-fuse calls under a
// lock that all opens of the mount share.
func (n *fileNode) openHandle(key digest.Digest) *ptHandle {
	n.opens.mu.Lock()
	n.opens.n++
	alone := n.opens.n == 1
	n.opens.mu.Unlock()
	h := &ptHandle{n: n}
	if alone {
		h.f = n.openEntry(key)
	}
	return h
}

// openEntry returns the cache entry key of n's content, verified, or nil.
// The kernel reads a passthrough file without asking us, so the entry is
// verified now, at open, unless it is the very file verified last time.
func (n *fileNode) openEntry(key digest.Digest) *os.File {
	l, e := n.l, n.e
	f, err := l.fsys.cfg.cache.(FileCache).Open(key)
	if err != nil {
		return nil
	}
	st, err := f.Stat()
	if err != nil || st.Size() != e.Size {
		f.Close()
		return nil
	}
	id, ok := idOf(st)
	n.opens.mu.Lock()
	known := ok && n.opens.verified == id
	n.opens.mu.Unlock()
	if known {
		return f
	}
	v := key.Verifier()
	if _, err = io.Copy(v, io.NewSectionReader(f, 0, e.Size)); err != nil || !v.Verified() {
		f.Close()
		log.L.WithFields(log.Fields{"layer": l.src.dgst, "file": e.Name, "key": key}).Debug("cache entry unusable for passthrough")
		return nil
	}
	if cs, err := l.chunks(e, 0, e.Size); err == nil {
		l.src.chunks.setLocal(cs[0].idx, true)
	}
	if ok {
		n.opens.mu.Lock()
		n.opens.verified = id
		n.opens.mu.Unlock()
	}
	return f
}

var _ = (gofs.FilePassthroughFder)((*ptHandle)(nil))

// PassthroughFd returns the verified cache entry if the handle is still the
// only one open. go-fuse calls it at most once per handle, right after
// Open, and falls back to reads through the FileSystem when it returns
// false or the kernel refuses the file.
func (h *ptHandle) PassthroughFd() (int, bool) {
	h.n.opens.mu.Lock()
	alone := h.n.opens.n == 1
	h.n.opens.mu.Unlock()
	if !alone || h.f == nil {
		return 0, false
	}
	return int(h.f.Fd()), true
}

var _ = (gofs.FileReleaser)((*ptHandle)(nil))

func (h *ptHandle) Release(ctx context.Context) syscall.Errno {
	h.n.opens.mu.Lock()
	h.n.opens.n--
	h.n.opens.mu.Unlock()
	if h.f != nil {
		h.f.Close()
	}
	return 0
}
