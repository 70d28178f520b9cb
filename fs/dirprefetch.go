package fs

import (
	"context"
	"path"
	"sync"
)

// dirPolicy is the directory prefetch: along with a read that missed in a
// file, it fetches the other regular files of the file's directory, when
// they are small enough all together (WithDirPrefetch). Each directory is
// considered once per layer. Unlike read-ahead, which follows blob order,
// it serves a program that reads files of one directory in an order of its
// own, as an interpreter importing its modules does.
type dirPolicy struct {
	max int64
}

func (p *dirPolicy) Name() string { return "directory" }

func (p *dirPolicy) Attach(context.Context, *Layer, map[string]string) any {
	if p.max <= 0 {
		return nil
	}
	return &dirLayer{max: p.max, seen: map[string]bool{}}
}

// dirLayer is the directory prefetch of one layer.
type dirLayer struct {
	max  int64
	mu   sync.Mutex
	seen map[string]bool // directories considered
}

var _ ReadObserver = (*dirLayer)(nil)

func (d *dirLayer) Read(l *Layer, ev ReadEvent) {
	if ev.Hit {
		return
	}
	dir := path.Dir(ev.File)
	if dir == "." {
		dir = ""
	}
	d.mu.Lock()
	seen := d.seen[dir]
	d.seen[dir] = true
	d.mu.Unlock()
	if seen {
		return
	}
	if e, ok := l.Lookup(dir); ok && e.Type == "dir" {
		l.fetch(l.dirChunks(e, ev.File, d.max), Soon)
	}
}
