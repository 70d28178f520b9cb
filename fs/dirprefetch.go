package fs

import (
	"cmp"
	"path"
	"slices"

	"github.com/containerd/stargz-snapshotter/estargz"
)

// dirPrefetch fetches, along with a read that missed in file name, the
// other regular files of name's directory, when they are small enough all
// together (WithDirPrefetch). Each directory is considered once per layer.
// Unlike read-ahead, which follows blob order, it serves a program that
// reads files of one directory in an order of its own, as an interpreter
// importing its modules does.
func (l *layer) dirPrefetch(name string) {
	max := l.fsys.cfg.dirPrefetch
	if max <= 0 {
		return
	}
	dir := path.Dir(name)
	if dir == "." {
		dir = ""
	}
	l.ra.mu.Lock()
	if l.dirsSeen == nil {
		l.dirsSeen = map[string]bool{}
	}
	seen := l.dirsSeen[dir]
	l.dirsSeen[dir] = true
	l.ra.mu.Unlock()
	if seen {
		return
	}
	d, ok := l.src.r.Lookup(dir)
	if !ok || d.Type != "dir" {
		return
	}
	var cs []chunk
	var size int64
	d.ForeachChild(func(_ string, e *estargz.TOCEntry) bool {
		if e.Type != "reg" || e.Size <= 0 || e.Name == name {
			return true
		}
		fcs, err := l.chunks(e, 0, e.Size)
		if err != nil {
			return true // its own reads will report it
		}
		for _, c := range fcs {
			size += c.end - c.start
		}
		cs = append(cs, fcs...)
		return size <= max
	})
	if size > max || len(cs) == 0 {
		return
	}
	slices.SortFunc(cs, func(a, b chunk) int { return cmp.Or(cmp.Compare(a.start, b.start), cmp.Compare(a.inner, b.inner)) })
	l.startWindow(cs)
}
