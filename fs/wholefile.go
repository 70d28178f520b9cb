package fs

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
)

// A file of several chunks is served by passthrough from a whole-file
// entry: one Cache entry holding the whole file, keyed by the file's digest
// in the TOC. It is assembled from the file's chunks once they are all in
// the Cache, off the read path: when a handle that read the file through
// the FileSystem is released, or when an open finds no usable entry (that
// open, and those until the entry is ready, are served by the FileSystem).
// The entry is a copy: the chunks stay cached too, and those that no reader
// asks for any more age out of the Cache's LRU first.
const (
	// maxWholeFile bounds the files assembled into a whole-file entry.
	// Assembling costs a write of the whole file and a second copy of it
	// in the page cache; a larger file (a model, an archive) tends to be
	// read once, and it would push much of a small Cache out.
	maxWholeFile = 256 << 20
	// maxAssemblies bounds the whole-file entries prepared at once, all
	// layers together: each reads and hashes a file from the disk.
	maxAssemblies = 2
)

// assemblies are the whole-file entries being prepared, by key, so that
// two layers holding the same file prepare it once.
type assemblies struct {
	mu      sync.Mutex
	running map[digest.Digest]bool
}

// begin claims key. It returns false if key is being prepared already or
// maxAssemblies are.
func (a *assemblies) begin(key digest.Digest) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.running[key] || len(a.running) >= maxAssemblies {
		return false
	}
	if a.running == nil {
		a.running = map[digest.Digest]bool{}
	}
	a.running[key] = true
	return true
}

func (a *assemblies) end(key digest.Digest) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.running, key)
}

// prepareWhole makes the whole-file entry key of n's content ready for
// passthrough, in the background: it verifies the entry if there is one,
// and if there is none, or a corrupt one, stores it assembled from the
// file's chunks if they are all cached, then verifies it. It does nothing
// if the entry is being prepared already, or if maxAssemblies entries are:
// the next open or release of the file tries again.
func (n *fileNode) prepareWhole(key digest.Digest) {
	a := &n.l.fsys.assemblies
	if !a.begin(key) {
		return
	}
	if !n.l.work.spawn("whole-file assembly", func() { defer a.end(key); n.makeWhole(n.l.ctx, key) }) {
		a.end(key)
	}
}

func (n *fileNode) makeWhole(ctx context.Context, key digest.Digest) {
	if f := n.openEntry(key, true); f != nil {
		f.Close()
		return
	}
	l, e := n.l, n.e
	cs, err := l.chunks(e, 0, e.Size)
	if err != nil {
		return
	}
	for _, c := range cs {
		if _, ok := l.probe(ctx, c, false, nil); !ok {
			return
		}
	}
	// Like the background fetch, leave the disk and the CPU to a starting
	// workload that is still waiting for fetches.
	if l.fsys.demand.waitQuiet(ctx, backgroundQuiet) != nil {
		return
	}
	lg := log.G(ctx).WithFields(log.Fields{"layer": l.src.dgst, "file": e.Name, "key": key})
	started := time.Now()
	r := &wholeReader{ctx: ctx, l: l, cs: cs, v: key.Verifier()}
	if err := l.fsys.caps.fileCache.PutFrom(key, e.Size, r); err != nil {
		switch {
		case ctx.Err() != nil:
		case errdefs.IsNotFound(err): // a chunk was evicted meanwhile
			lg.WithError(err).Debug("whole-file entry not stored")
		default:
			lg.WithError(err).Warn("whole-file entry not stored")
		}
		return
	}
	if f := n.openEntry(key, true); f != nil {
		f.Close()
		lg.WithFields(log.Fields{"bytes": e.Size, "duration": time.Since(started)}).Debug("whole-file entry stored")
	}
}

// wholeReader reads a file from its chunks, cs, which it takes from memory
// or the Cache (never from the blob), each verified, and fails at its end
// rather than returning io.EOF unless the whole matches the file's digest,
// which v checks: a Cache's PutFrom then stores nothing.
type wholeReader struct {
	ctx  context.Context
	l    *layer
	cs   []chunk
	v    digest.Verifier
	buf  []byte // the chunk read from the Cache last
	rest []byte // what is left of the current chunk
}

func (r *wholeReader) Read(p []byte) (int, error) {
	for len(r.rest) == 0 {
		if len(r.cs) == 0 {
			if !r.v.Verified() {
				return 0, fmt.Errorf("file does not match its digest: %w", errdefs.ErrDataLoss)
			}
			return 0, io.EOF
		}
		if err := r.ctx.Err(); err != nil {
			return 0, err
		}
		c := r.cs[0]
		data, ok := r.l.fsys.mem.get(r.l.memKey(c))
		if !ok {
			if data, ok = r.l.probe(r.ctx, c, true, r.buf); !ok {
				return 0, fmt.Errorf("chunk at %d no longer cached: %w", c.off, errdefs.ErrNotFound)
			}
			r.buf = data
		}
		r.v.Write(data)
		r.rest, r.cs = data, r.cs[1:]
	}
	n := copy(p, r.rest)
	r.rest = r.rest[n:]
	return n, nil
}
