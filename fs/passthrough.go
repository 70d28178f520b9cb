package fs

import (
	"context"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/estargz"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	digest "github.com/opencontainers/go-digest"
)

// FileCache is a Cache whose entries are files holding exactly the entry's
// bytes. With one, FUSE passthrough serves a file whose content is one
// cached chunk straight from the entry's file, a file of several chunks
// from a whole-file entry assembled from them, and background fetch checks
// which chunks are cached without reading them.
type FileCache interface {
	Cache
	// Open returns the entry of key opened for reading; the caller closes
	// it. The content is unverified. An error means no usable entry.
	// The file must stay readable, with the same content, for as long as it
	// is open, even if the entry is evicted or replaced meanwhile.
	Open(key digest.Digest) (*os.File, error)
	// PutFrom stores under key the size bytes that r yields, as Put stores
	// data, without holding them in memory. If r fails, nothing is
	// stored. Like Put, it may drop an entry; it then need not read r.
	PutFrom(key digest.Digest, size int64, r io.Reader) error
}

// passthroughKey returns the cache key of an entry holding all of e's
// content if e may be served by passthrough: passthrough is on, the Cache
// is a FileCache and the layer's content can be verified. If e's content is
// one chunk, the key is the chunk's. If it is several, the key is e's file
// digest and whole is true: the entry is the whole file, assembled from its
// chunks (see prepareWhole), for files of up to maxWholeFile bytes.
// Otherwise key is "".
func (l *layer) passthroughKey(e *estargz.TOCEntry) (key digest.Digest, whole bool) {
	if !l.fsys.cfg.passthrough || e.Size <= 0 || l.verifier == nil {
		return "", false
	}
	if _, ok := l.fsys.cfg.cache.(FileCache); !ok {
		return "", false
	}
	cs, err := l.chunks(e, 0, 1)
	if err != nil || cs[0].off != 0 {
		return "", false
	}
	if cs[0].size == e.Size {
		return l.cacheKey(cs[0]), false
	}
	if e.Size > maxWholeFile {
		return "", false
	}
	d, err := digest.Parse(e.Digest)
	if err != nil {
		return "", false
	}
	return d, true
}

// opens counts a file node's open handles. The kernel refuses to open an
// inode with passthrough while it is open without, and the other way
// round, so a handle asks for passthrough only when it is the only one;
// go-fuse then gives later opens the same backing file while it is in use.
// Every open of a node that may be served by passthrough is counted, served
// by passthrough or not.
type opens struct {
	mu sync.Mutex
	n  int
	// closed is when a handle was released last (see PassthroughFd).
	closed time.Time
	// verified identifies the cache entry file last verified, so that
	// opening the same file again does not hash it again; rejected the one
	// last found corrupt, so that it is not hashed again either.
	verified, rejected fileID
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
	n     *fileNode
	key   digest.Digest // of the entry holding the file's content
	whole bool          // the entry is a whole-file entry
	f     *os.File      // the verified cache entry, if the handle was opened alone
}

// openHandle returns the handle of a new open of n, whose content is the
// cache entry key. When no other handle is open, it opens the entry if it
// is verified, here rather than in PassthroughFd, which go-fuse calls under
// a lock that all opens of the mount share. An entry of one chunk is
// verified now if need be; a whole-file entry, which may be large, only in
// the background, and this open is then served by the FileSystem.
func (n *fileNode) openHandle(key digest.Digest, whole bool) *ptHandle {
	n.opens.mu.Lock()
	n.opens.n++
	alone := n.opens.n == 1
	n.opens.mu.Unlock()
	h := &ptHandle{n: n, key: key, whole: whole}
	if !alone {
		return h
	}
	h.f = n.openEntry(key, !whole)
	if h.f != nil {
		n.l.observeOpen(n.e) // the kernel may read it without asking us
	}
	if h.f == nil && whole {
		n.prepareWhole(key)
	}
	return h
}

// openEntry returns the cache entry key of n's content, verified, or nil.
// The kernel reads a passthrough file without asking us, so the entry must
// be verified before: it is the very file verified last time or, with
// check, it is verified now.
func (n *fileNode) openEntry(key digest.Digest, check bool) *os.File {
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
	verified := ok && n.opens.verified == id
	rejected := ok && n.opens.rejected == id
	n.opens.mu.Unlock()
	switch {
	case verified:
		return f
	case rejected || !check:
		f.Close()
		return nil
	}
	v := key.Verifier()
	if _, err = io.Copy(v, io.NewSectionReader(f, 0, e.Size)); err != nil || !v.Verified() {
		f.Close()
		log.L.WithFields(log.Fields{"layer": l.src.dgst, "file": e.Name, "key": key}).Debug("cache entry unusable for passthrough")
		if ok {
			n.opens.mu.Lock()
			n.opens.rejected = id
			n.opens.mu.Unlock()
		}
		return nil
	}
	if cs, err := l.chunks(e, 0, e.Size); err == nil && len(cs) == 1 {
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

// reopenQuiet is how long after a handle of a file is released its opens
// are served without passthrough. The kernel leaves the io mode of the
// released handle (and lets go of its backing file) when it has the answer
// to the release, which may reach it after the answer to the next open; an
// open with a new backing file meanwhile fails with EIO, while an open
// without passthrough waits for the old mode to end. The answer to a
// release leaves go-fuse after our Release returns; on a busy node the
// goroutine that writes it may wait for a CPU for tens of milliseconds
// (20 containers starting at once on 2 CPUs: an open failed with EIO with
// 10ms here), so the bound is far above a scheduling delay.
const reopenQuiet = 250 * time.Millisecond

// PassthroughFd returns the verified cache entry if the handle is still the
// only one open and no handle of the file was released within reopenQuiet.
// go-fuse calls it only when no handle of the file is served by passthrough
// (otherwise it gives the new handle the same backing file), right after
// Open, and serves the handle through the FileSystem when it returns false.
func (h *ptHandle) PassthroughFd() (int, bool) {
	h.n.opens.mu.Lock()
	alone := h.n.opens.n == 1
	quiet := time.Since(h.n.opens.closed) >= reopenQuiet
	h.n.opens.mu.Unlock()
	if !alone || !quiet || h.f == nil {
		return 0, false
	}
	return int(h.f.Fd()), true
}

var _ = (gofs.FileReleaser)((*ptHandle)(nil))

// Release closes the handle. A handle of a file of several chunks that was
// opened without its whole-file entry may have read the last of its
// chunks: the entry is then prepared for the next open.
func (h *ptHandle) Release(ctx context.Context) syscall.Errno {
	h.n.opens.mu.Lock()
	h.n.opens.n--
	h.n.opens.closed = time.Now()
	h.n.opens.mu.Unlock()
	if h.f != nil {
		h.f.Close()
	} else if h.whole {
		h.n.prepareWhole(h.key)
	}
	return 0
}
