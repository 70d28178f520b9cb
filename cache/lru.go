package cache

import (
	"errors"
	"os"

	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// Lock order: a key's lock (keyLock) before mu. Files are renamed and
// unlinked under their key's lock, never under mu, so that Get and Put of
// other keys do not wait for the disk.

// added indexes key's new file of size bytes as the most recently used
// entry. The caller holds key's lock. It returns the entries to evict, which
// the caller passes to evict once it has released key's lock.
func (d *Dir) added(key digest.Digest, size int64) []*entry {
	now := d.now()
	d.mu.Lock()
	if el, ok := d.entries[key]; ok {
		e := el.Value.(*entry)
		d.size += size - e.size
		e.size, e.touched = size, now.UnixNano()
		d.lru.MoveToFront(el)
	} else {
		d.entries[key] = d.lru.PushFront(&entry{key: key, size: size, touched: now.UnixNano()})
		d.size += size
	}
	if d.indexing {
		delete(d.used, key)
	}
	resumed := d.pause != 0
	d.pause = 0
	victims := d.overLocked()
	d.mu.Unlock()
	if resumed {
		log.L.WithField("dir", d.root).Info("chunk cache: writes resumed")
	}
	return victims
}

// forget drops key from the index. The caller holds mu.
func (d *Dir) forget(key digest.Digest) {
	if el, ok := d.entries[key]; ok {
		d.size -= el.Value.(*entry).size
		d.lru.Remove(el)
		delete(d.entries, key)
	}
}

// markUsed records a hit on key, whose file is at path.
func (d *Dir) markUsed(key digest.Digest, path string) {
	now := d.now()
	touch := false
	d.mu.Lock()
	if el, ok := d.entries[key]; ok {
		d.lru.MoveToFront(el)
		if e := el.Value.(*entry); now.UnixNano()-e.touched >= int64(touchInterval) {
			e.touched, touch = now.UnixNano(), true
		}
	} else if d.indexing {
		// An entry from before NewDir, not indexed yet: the merge puts
		// it first.
		if _, ok := d.used[key]; !ok {
			touch = true
		}
		d.used[key] = now.UnixNano()
	}
	// Otherwise the entry was evicted or deleted while it was read.
	d.mu.Unlock()
	if touch {
		// Best effort: a lost touch only makes the entry look older
		// after a restart.
		_ = os.Chtimes(path, now, now)
	}
}

// overLocked takes least recently used entries out of the index until it
// fits its bound, and returns them for evict. The caller holds mu. Nothing
// is evicted while indexing: entries not indexed yet are older than every
// indexed one.
func (d *Dir) overLocked() []*entry {
	if d.indexing {
		return nil
	}
	var victims []*entry
	for d.size > d.limit && d.lru.Len() > 0 {
		e := d.lru.Remove(d.lru.Back()).(*entry)
		delete(d.entries, e.key)
		d.size -= e.size
		d.evictions++
		victims = append(victims, e)
	}
	return victims
}

// evict unlinks the files of victims, already out of the index, unless a
// Put has stored the key again since.
func (d *Dir) evict(victims []*entry) {
	for _, e := range victims {
		path, err := d.path(e.key)
		if err != nil {
			continue
		}
		km := d.keyLock(e.key)
		km.Lock()
		d.mu.Lock()
		_, back := d.entries[e.key]
		d.mu.Unlock()
		if !back {
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				log.L.WithError(err).WithField("dir", d.root).Warn("chunk cache: evict")
			}
		}
		km.Unlock()
	}
}

// writeFailed pauses writes after a failed write of need bytes, with a
// pause that doubles while writes keep failing. A full disk also lowers the
// bound to an eighth (or 2*need) below the current size, for the rest of the
// Dir's life, so that the cache stops competing for the disk with the
// workloads it serves, and evicts down to it. Only the first error in a row
// is logged.
func (d *Dir) writeFailed(err error, need int64) {
	now := d.now()
	d.mu.Lock()
	d.writeErrs++
	first := d.pause == 0
	if first {
		d.pause = minPause
	} else {
		d.pause = min(2*d.pause, maxPause)
	}
	d.pausedUntil = now.Add(d.pause)
	pause := d.pause
	var victims []*entry
	full := errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT)
	if full {
		reclaim := max(d.size/8, 2*need)
		d.limit = min(d.limit, max(d.size-reclaim, 0))
		victims = d.overLocked()
	}
	limit := d.limit
	d.mu.Unlock()
	if first {
		l := log.L.WithError(err).WithFields(log.Fields{"dir": d.root, "pause": pause})
		if full {
			l = l.WithField("max_size", limit)
		}
		l.Warn("chunk cache: write failed; writes paused, reads are served from the registry meanwhile")
	}
	d.evict(victims)
}
