package fs

import (
	"bytes"
	"context"
	"debug/elf"
	"path"

	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/lazypull/lazypull/fs/internal/elfdeps"
)

// A program starts with its loading: the dynamic loader reads the
// program's interpreter, /etc/ld.so.cache and each library it needs, then
// the libraries those need, one read after another; in a lazily pulled
// image each is a round trip to the registry. When the head of an ELF file
// arrives, the loader policy finds what the loader will open, in the image
// the file belongs to, and fetches it all at once (WithLoaderPrefetch).

// Bounds of the loader prefetch.
const (
	// maxLoaderWhole is the largest library, in compressed bytes, fetched
	// whole: the loader maps all of it and touches much. Of a larger one
	// only the first and last chunks, where its headers and data lie.
	maxLoaderWhole = 16 << 20
	// maxLoaderFiles bounds the files the loading of one program fetches.
	maxLoaderFiles = 128
)

// loaderPolicy is the loader prefetch.
type loaderPolicy struct {
	// seen holds the files whose loading was prefetched, by layer and name,
	// and the library directories whose siblings were.
	seen onceSet
}

func (p *loaderPolicy) Name() string { return "loader" }

func (p *loaderPolicy) Attach(context.Context, *Layer, map[string]string) any { return p }

var _ HeadObserver = (*loaderPolicy)(nil)

// HeadArrived starts fetching what the loader will open for file name,
// whose first chunk is head, if it is an ELF file not seen before.
func (p *loaderPolicy) HeadArrived(l *Layer, name string, head []byte) {
	if !bytes.HasPrefix(head, []byte(elf.ELFMAG)) || !p.seen.first(string(l.Digest())+"/"+name) {
		return
	}
	e, ok := l.Lookup(name)
	if !ok || e.Type != "reg" {
		return
	}
	// The kernel reads the interpreter as soon as it has mapped the
	// program, before the loader reads the program's dynamic segment,
	// which may lie chunks further: fetch it first, from the head alone.
	deps, _, _ := elfdeps.Parse(bytes.NewReader(head), e.Size)
	l.Go("loader prefetch", func(ctx context.Context) {
		stack := l.image()
		if deps.Interp != "" {
			p.fetchPaths(stack, deps.Interp, elfdeps.LdSoCache)
		} else if deps.SharedObject() {
			p.fetchSiblingLibs(l, e.Name)
		}
		p.fetchLoad(ctx, stack, l, e)
	})
}

// Bounds of prefetchSiblingLibs, in compressed bytes.
const (
	maxSiblingLib  = 512 << 10
	maxSiblingLibs = 2 << 20
)

// fetchSiblingLibs starts fetching the other shared objects of the
// directory of library name, those of at most maxSiblingLib, up to
// maxSiblingLibs in all. A library read before anything named it was
// loaded with dlopen: a program that loads one plugin of a directory that
// way loads more (a JVM its native libraries, an interpreter its
// extension modules), each otherwise a round trip.
func (p *loaderPolicy) fetchSiblingLibs(l *Layer, name string) {
	dir := path.Dir(name)
	if !p.seen.first("libdir/" + string(l.Digest()) + "/" + dir) {
		return
	}
	d, ok := l.Lookup(dir)
	if dir == "." || !ok || d.Type != "dir" {
		return
	}
	var cs []chunk
	var total int64
	d.ForeachChild(func(base string, e *estargz.TOCEntry) bool {
		if e.Type != "reg" || e.Name == name || !elfdeps.IsSharedObjectName(base) {
			return true
		}
		fcs, err := l.fileChunks(e, 0, e.Size)
		if err != nil || len(fcs) == 0 {
			return true
		}
		size := fcs[len(fcs)-1].end - fcs[0].start
		if size > maxSiblingLib || total+size > maxSiblingLibs {
			return true
		}
		total += size
		cs = append(cs, fcs...)
		return true
	})
	l.fetch(sortChunks(cs), Soon)
}

// fetchPaths starts fetching the files at paths in stack that were not
// fetched for the loader before, and returns them.
func (p *loaderPolicy) fetchPaths(stack image, paths ...string) []loadTarget {
	var found []loadTarget
	for _, at := range paths {
		dl, de := stack.lookup(at)
		if de == nil || !p.seen.first(string(dl.Digest())+"/"+de.Name) {
			continue
		}
		dl.fetchFile(de)
		found = append(found, loadTarget{dl, de, at})
	}
	return found
}

// loadTarget is a file the loader opens, at path in the image.
type loadTarget struct {
	l    *Layer
	e    *estargz.TOCEntry
	path string
}

// fetchLoad fetches, for the program or library e of l, the files the
// loader will open, and theirs in turn, in parallel as soon as each is
// known.
func (p *loaderPolicy) fetchLoad(ctx context.Context, stack image, l *Layer, e *estargz.TOCEntry) {
	queue := []loadTarget{{l, e, "/" + e.Name}}
	for n := 0; len(queue) > 0 && n < maxLoaderFiles && ctx.Err() == nil; n++ {
		t := queue[0]
		queue = queue[1:]
		deps, ok, err := elfdeps.Parse(&fileReader{ctx: ctx, l: t.l.l, e: t.e}, t.e.Size)
		if !ok || err != nil {
			if err != nil {
				log.G(ctx).WithError(err).WithFields(log.Fields{"layer": t.l.Digest(), "file": t.e.Name}).Debug("no loader prefetch")
			}
			continue
		}
		if deps.Interp != "" {
			p.fetchPaths(stack, deps.Interp, elfdeps.LdSoCache)
		}
		libs := elfdeps.Libraries("/"+t.e.Name, deps, func(name string) bool {
			_, e := stack.lookup(name)
			return e != nil
		})
		paths := make([]string, len(libs))
		private := map[string]bool{} // found in the program's run path
		for i, lib := range libs {
			paths[i], private[lib.Path] = lib.Path, lib.Private
		}
		found := p.fetchPaths(stack, paths...)
		for _, d := range found {
			if private[d.path] {
				// A program's own library directory holds the
				// plugins it loads with dlopen next.
				p.fetchSiblingLibs(d.l, d.e.Name)
			}
		}
		log.G(ctx).WithFields(log.Fields{"layer": t.l.Digest(), "file": t.e.Name, "prefetching": len(found)}).Debug("loader prefetch")
		if n == 0 {
			// The loader maps all of the file, and the program touches
			// much of it: a library loaded with dlopen, which no other
			// file names, too. It comes after what it needs, which is
			// smaller and waited for first.
			l.fetchFile(e)
		}
		queue = append(queue, found...)
	}
}
