package cache

import (
	"cmp"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
)

// mergeBatch bounds how many scanned entries are merged per hold of mu, so
// that Get and Put do not wait long for a large index.
const mergeBatch = 1024

// indexGate, when not nil, holds back the background indexing of new Dirs
// until it is closed: tests use it to act while a Dir is indexing.
var indexGate chan struct{}

// found is an entry file seen by scan.
type found struct {
	key   digest.Digest
	size  int64
	mtime int64 // unix nanos
}

// index runs once per Dir, in the background: it indexes the entries that
// were on disk before NewDir, then evicts what exceeds the bound.
func (d *Dir) index() {
	defer close(d.indexed)
	if indexGate != nil {
		select {
		case <-indexGate:
		case <-d.stop:
			return
		}
	}
	start := time.Now()
	files, ok := d.scan()
	if !ok {
		return // closed
	}
	d.merge(files)
	st := d.Stats()
	log.L.WithFields(log.Fields{
		"dir":     d.root,
		"entries": st.Entries,
		"bytes":   st.Bytes,
		"took":    time.Since(start),
	}).Info("chunk cache indexed")
}

// scan lists the entry files under root. Files whose name is not a digest
// under its fan-out directory are not the cache's and are left alone. An
// empty file (other than the entry of empty content) is what a crash leaves
// of an entry whose data never reached the disk; it is removed. ok is false
// if the Dir was closed meanwhile.
func (d *Dir) scan() (files []found, ok bool) {
	for _, alg := range []digest.Algorithm{digest.SHA256, digest.SHA384, digest.SHA512} {
		algDir := filepath.Join(d.root, alg.String())
		fans, err := readDir(algDir)
		if err != nil {
			if !os.IsNotExist(err) {
				log.L.WithError(err).WithField("dir", d.root).Warn("chunk cache: index")
			}
			continue
		}
		empty := alg.FromBytes(nil)
		for _, fan := range fans {
			select {
			case <-d.stop:
				return nil, false
			default:
			}
			if !fan.IsDir() || len(fan.Name()) != 2 {
				continue
			}
			ents, err := readDir(filepath.Join(algDir, fan.Name()))
			if err != nil {
				log.L.WithError(err).WithField("dir", d.root).Warn("chunk cache: index")
				continue
			}
			for _, ent := range ents {
				name := ent.Name()
				if !ent.Type().IsRegular() || name[:min(2, len(name))] != fan.Name() {
					continue
				}
				key := digest.NewDigestFromEncoded(alg, name)
				if key.Validate() != nil {
					continue
				}
				info, err := ent.Info()
				if err != nil {
					continue // deleted meanwhile
				}
				if info.Size() == 0 && key != empty {
					d.removeEmpty(key)
					continue
				}
				files = append(files, found{key: key, size: info.Size(), mtime: info.ModTime().UnixNano()})
			}
		}
	}
	return files, true
}

// readDir lists dir unsorted: sorting 100k names buys nothing here.
func readDir(dir string) ([]os.DirEntry, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.ReadDir(-1)
}

// removeEmpty removes key's file if it is still empty: a Put may have
// replaced it since it was listed.
func (d *Dir) removeEmpty(key digest.Digest) {
	path, err := d.path(key)
	if err != nil {
		return
	}
	km := d.keyLock(key)
	km.Lock()
	defer km.Unlock()
	if st, err := os.Lstat(path); err == nil && st.Size() == 0 {
		_ = os.Remove(path)
	}
}

// merge adds the scanned files to the index behind every entry used since
// NewDir, most recently modified first, then ends indexing and evicts what
// exceeds the bound. Files deleted or stored again while indexing are
// skipped (the index already knows them better); files hit while indexing
// go first.
func (d *Dir) merge(files []found) {
	slices.SortFunc(files, func(a, b found) int { return cmp.Compare(b.mtime, a.mtime) })
	var recent []found
	for len(files) > 0 {
		batch := files[:min(mergeBatch, len(files))]
		files = files[len(batch):]
		d.mu.Lock()
		for _, f := range batch {
			if _, ok := d.gone[f.key]; ok {
				continue
			}
			if _, ok := d.entries[f.key]; ok {
				continue
			}
			if t, ok := d.used[f.key]; ok {
				f.mtime = t
				recent = append(recent, f)
				continue
			}
			d.entries[f.key] = d.lru.PushBack(&entry{key: f.key, size: f.size, touched: f.mtime})
			d.size += f.size
		}
		d.mu.Unlock()
	}
	// Behind the entries used later, in one walk from the front: recent
	// goes newest first. The list is only roughly ordered by touched
	// (hits update it once per touchInterval), which is good enough here.
	slices.SortFunc(recent, func(a, b found) int { return cmp.Compare(b.mtime, a.mtime) })
	d.mu.Lock()
	el := d.lru.Front()
	for _, f := range recent {
		// Stored again or deleted since the batch was merged.
		if _, ok := d.entries[f.key]; ok {
			continue
		}
		if _, ok := d.gone[f.key]; ok {
			continue
		}
		for el != nil && el.Value.(*entry).touched > f.mtime {
			el = el.Next()
		}
		e := &entry{key: f.key, size: f.size, touched: f.mtime}
		if el != nil {
			d.entries[f.key] = d.lru.InsertBefore(e, el)
		} else {
			d.entries[f.key] = d.lru.PushBack(e)
		}
		d.size += f.size
	}
	d.indexing = false
	d.gone, d.used = nil, nil
	victims := d.overLocked()
	d.mu.Unlock()
	d.evict(victims)
}
