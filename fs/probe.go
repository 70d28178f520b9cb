package fs

import (
	"context"

	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
)

// caps are what the FileSystem's Opener and Cache can do beyond their
// interfaces, found once, in New.
type caps struct {
	cache Cache // nil without WithCache
	// fileCache is the Cache if it is a FileCache: passthrough, whole-file
	// entries and probes by file size need one.
	fileCache FileCache
	// sizer is the Cache if it tells an entry's size without reading it
	// or counting a use.
	sizer interface {
		Has(digest.Digest) (int64, bool)
	}
	// manifests is the Opener if it reads manifests (entrypoint prefetch).
	manifests ManifestReader
}

func capsOf(o Opener, c Cache) caps {
	cs := caps{cache: c}
	cs.fileCache, _ = c.(FileCache)
	cs.sizer, _ = c.(interface {
		Has(digest.Digest) (int64, bool)
	})
	cs.manifests, _ = o.(ManifestReader)
	return cs
}

// probe looks for chunk c outside the blob: in memory, then in the Cache.
//
// With data, it returns the chunk's bytes, verified: a Cache entry that
// does not match is a miss, and no longer counts as local. A chunk read
// from the Cache is kept in memory too, unless the caller passed buf, a
// buffer to read it into when it has room: a reader of many chunks, each
// read once, which looked in memory itself (the slices memory holds must
// not be written to).
//
// Without data, it only reports whether the chunk is there, as cheaply as
// the Cache allows: known local, in memory, an entry of its size that the
// Cache tells of without reading it, or else (a plain Cache) an entry read
// whole into buf. That entry is not verified: a read verifies it before
// serving it. A chunk found in the Cache is marked local.
func (l *layer) probe(ctx context.Context, c chunk, data bool, buf []byte) ([]byte, bool) {
	t, mkey := l.src.chunks, l.memKey(c)
	if data && buf == nil {
		if b, ok := l.fsys.mem.get(mkey); ok {
			return b, true
		}
	} else if t.isLocal(c.idx) || l.fsys.mem.has(mkey) {
		return nil, true
	}
	key := l.cacheKey(c)
	caps := &l.fsys.caps
	if key == "" || caps.cache == nil {
		return nil, false
	}
	if !data {
		has, known := false, true
		switch {
		case caps.sizer != nil:
			size, ok := caps.sizer.Has(key)
			has = ok && size == c.size
		case caps.fileCache != nil:
			if f, err := caps.fileCache.Open(key); err == nil {
				st, err := f.Stat()
				has = err == nil && st.Size() == c.size
				f.Close()
			}
		default:
			known = false
		}
		if known {
			if has {
				t.setLocal(c.idx, true)
			}
			return nil, has
		}
	}
	keep := buf == nil
	if int64(cap(buf)) < c.size {
		buf = make([]byte, c.size)
	}
	b := buf[:c.size]
	n, ok := caps.cache.Get(key, b)
	if !ok || int64(n) != c.size {
		t.setLocal(c.idx, false)
		return nil, false
	}
	if !data {
		t.setLocal(c.idx, true)
		return nil, true
	}
	if err := l.verify(c, b); err != nil {
		log.G(ctx).WithError(err).WithFields(log.Fields{"layer": l.src.dgst, "file": c.e.Name, "key": key}).Warn("discarding corrupt cache entry")
		t.setLocal(c.idx, false)
		return nil, false
	}
	t.setLocal(c.idx, true)
	if keep {
		l.fsys.mem.put(mkey, b)
	}
	return b, true
}
