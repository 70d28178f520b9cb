package fs

import (
	"bytes"
	"cmp"
	"context"
	"debug/elf"

	"io"
	"path"
	"slices"
	"strings"
	"sync"

	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/lazypull/lazypull/fs/internal/elfdeps"
	digest "github.com/opencontainers/go-digest"
)

// A program starts with its loading: the dynamic loader reads the
// program's interpreter, /etc/ld.so.cache and each library it needs, then
// the libraries those need, one read after another; in a lazily pulled
// image each is a round trip to the registry. When a read fetches the start
// of an ELF file, loaderPrefetch finds what the loader will open, in the
// image the file belongs to, and fetches it all at once.

// Bounds of the loader prefetch.
const (
	// maxLoaderWhole is the largest library, in compressed bytes, fetched
	// whole: the loader maps all of it and touches much. Of a larger one
	// only the first and last chunks, where its headers and data lie.
	maxLoaderWhole = 16 << 20
	// maxLoaderFiles bounds the files the loading of one program fetches.
	maxLoaderFiles = 128
	// maxImagesMemory bounds the images and the files remembered.
	maxImagesMemory = 1 << 16
)

// images remembers the layers of each image mounted, from the image-layers
// labels, so that a file's dependencies are looked up in the image it
// belongs to.
type images struct {
	mu    sync.Mutex
	lists [][]digest.Digest // bottom layer first
	// seen holds the files whose loading was prefetched, by layer and name.
	seen map[string]struct{}
}

// note records the image-layers label of a mounted layer. The label of an
// image's bottom layer lists all of them; those of the layers above list
// only themselves and what lies above, and add nothing.
func (im *images) note(self digest.Digest, label string) {
	list := []digest.Digest{self}
	for _, s := range strings.Split(label, ",") {
		if d, err := digest.Parse(strings.TrimSpace(s)); err == nil && d != self {
			list = append(list, d)
		}
	}
	im.noteList(list)
}

// noteList records the layers of an image, bottom first.
func (im *images) noteList(list []digest.Digest) {
	if len(list) == 0 {
		return
	}
	im.mu.Lock()
	defer im.mu.Unlock()
	for i, l := range im.lists {
		switch {
		case isSuffix(list, l):
			return
		case isSuffix(l, list):
			im.lists[i] = list
			return
		}
	}
	if len(im.lists) >= maxImagesMemory {
		im.lists = im.lists[1:]
	}
	im.lists = append(im.lists, list)
}

// isSuffix reports whether a ends b.
func isSuffix(a, b []digest.Digest) bool {
	return len(a) <= len(b) && slices.Equal(a, b[len(b)-len(a):])
}

// first reports whether key is seen for the first time, and marks it.
func (im *images) first(key string) bool {
	im.mu.Lock()
	defer im.mu.Unlock()
	if im.seen == nil {
		im.seen = map[string]struct{}{}
	}
	if _, ok := im.seen[key]; ok {
		return false
	}
	if len(im.seen) >= maxImagesMemory {
		// A daemon that has served many images forgets: what is
		// prefetched again is local by then, and costs nothing.
		clear(im.seen)
	}
	im.seen[key] = struct{}{}
	return true
}

// stack returns the mounted layers of l's image, top first: the longest
// image known to hold l, or l alone.
func (f *FileSystem) stack(l *layer) []*layer {
	f.images.mu.Lock()
	var list []digest.Digest
	for _, ds := range f.images.lists {
		if len(ds) > len(list) && slices.Contains(ds, l.src.dgst) {
			list = ds
		}
	}
	f.images.mu.Unlock()
	if list == nil {
		return []*layer{l}
	}
	stack, _ := f.mountedStack(list, l)
	return stack
}

// mountedStack returns the layers of list (bottom first) that are mounted,
// or among known, top first, and the channel that is closed when a mount
// is added.
func (f *FileSystem) mountedStack(list []digest.Digest, known ...*layer) ([]*layer, <-chan struct{}) {
	byDigest := make(map[digest.Digest]*layer, len(known))
	for _, l := range known {
		byDigest[l.src.dgst] = l
	}
	f.mu.Lock()
	for _, m := range f.mounts {
		if m.layer != nil && m.server != nil {
			byDigest[m.layer.src.dgst] = m.layer
		}
	}
	changed := f.mounted
	f.mu.Unlock()
	stack := make([]*layer, 0, len(list))
	for _, d := range slices.Backward(list) {
		if ml, ok := byDigest[d]; ok {
			stack = append(stack, ml)
		}
	}
	return stack, changed
}

// lookupImage returns the regular file at p in the merged tree of stack,
// following symlinks as the kernel would; nil if there is none. A whiteout
// or an opaque directory hides what lies below it.
func lookupImage(stack []*layer, p string) (*layer, *estargz.TOCEntry) {
	for range 40 { // symlinks followed, as the kernel's bound
		comps := strings.Split(strings.TrimPrefix(path.Clean("/"+p), "/"), "/")
		var next string
		for i := range comps {
			name := strings.Join(comps[:i+1], "/")
			l, e := topEntry(stack, name)
			switch {
			case e == nil:
				return nil, nil
			case e.Type == "symlink":
				target := e.LinkName
				if !path.IsAbs(target) {
					target = path.Join(path.Dir("/"+name), target)
				}
				next = path.Join(target, strings.Join(comps[i+1:], "/"))
			case i == len(comps)-1:
				if e.Type == "reg" {
					return l, e
				}
				return nil, nil
			case e.Type != "dir":
				return nil, nil
			}
			if next != "" {
				break
			}
		}
		if next == "" {
			return nil, nil
		}
		p = next
	}
	return nil, nil
}

// topEntry returns the entry at name of the top-most layer of stack that
// has one, or nil when there is none or a whiteout hides it.
func topEntry(stack []*layer, name string) (*layer, *estargz.TOCEntry) {
	dir, base := path.Split(name)
	for _, l := range stack {
		if e, ok := l.src.r.Lookup(name); ok {
			return l, e
		}
		if _, ok := l.src.r.Lookup(dir + whiteoutPrefix + base); ok {
			return nil, nil
		}
		if _, ok := l.src.r.Lookup(dir + opaqueMarker); ok {
			return nil, nil
		}
	}
	return nil, nil
}

// loaderPrefetch starts fetching what the loader will open for file name,
// whose first chunk is head, if it is an ELF file not seen before.
func (l *layer) loaderPrefetch(name string, head []byte) {
	if !bytes.HasPrefix(head, []byte(elf.ELFMAG)) || !l.fsys.images.first(string(l.src.dgst)+"/"+name) {
		return
	}
	e, ok := l.src.r.Lookup(name)
	if !ok || e.Type != "reg" {
		return
	}
	// The kernel reads the interpreter as soon as it has mapped the
	// program, before the loader reads the program's dynamic segment,
	// which may lie chunks further: fetch it first, from the head alone.
	deps, _, _ := elfdeps.Parse(bytes.NewReader(head), e.Size)
	l.spawn("loader prefetch", func() {
		stack := l.fsys.stack(l)
		if deps.Interp != "" {
			l.fsys.prefetchPaths(stack, deps.Interp, elfdeps.LdSoCache)
			l.fsys.prefetchPython(stack, "/"+e.Name)
		} else if deps.SharedObject() {
			l.prefetchSiblingLibs(e.Name)
		}
		l.fsys.prefetchLoad(l.ctx, stack, l, e)
	})
}

// Bounds of prefetchSiblingLibs, in compressed bytes.
const (
	maxSiblingLib  = 512 << 10
	maxSiblingLibs = 2 << 20
)

// prefetchSiblingLibs starts fetching the other shared objects of the
// directory of library name, those of at most maxSiblingLib, up to
// maxSiblingLibs in all. A library read before anything named it was
// loaded with dlopen: a program that loads one plugin of a directory that
// way loads more (a JVM its native libraries, an interpreter its
// extension modules), each otherwise a round trip.
func (l *layer) prefetchSiblingLibs(name string) {
	dir := path.Dir(name)
	if !l.fsys.images.first("libdir/" + string(l.src.dgst) + "/" + dir) {
		return
	}
	d, ok := l.src.r.Lookup(dir)
	if dir == "." || !ok || d.Type != "dir" {
		return
	}
	var cs []chunk
	var total int64
	d.ForeachChild(func(base string, e *estargz.TOCEntry) bool {
		if e.Type != "reg" || e.Name == name || !elfdeps.IsSharedObjectName(base) {
			return true
		}
		fcs, err := l.chunks(e, 0, e.Size)
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
	slices.SortFunc(cs, func(a, b chunk) int { return cmp.Compare(a.start, b.start) })
	l.startWindow(cs)
}

// prefetchPaths starts fetching the files at paths in stack that were not
// fetched for the loader before, and returns them.
func (f *FileSystem) prefetchPaths(stack []*layer, paths ...string) []loadTarget {
	var found []loadTarget
	for _, p := range paths {
		dl, de := lookupImage(stack, p)
		if de == nil || !f.images.first(string(dl.src.dgst)+"/"+de.Name) {
			continue
		}
		dl.prefetchFile(de)
		found = append(found, loadTarget{dl, de, p})
	}
	return found
}

// loadTarget is a file the loader opens, at path in the image.
type loadTarget struct {
	l    *layer
	e    *estargz.TOCEntry
	path string
}

// prefetchLoad fetches, for the program or library e of l, the files the
// loader will open, and theirs in turn, in parallel as soon as each is
// known.
func (f *FileSystem) prefetchLoad(ctx context.Context, stack []*layer, l *layer, e *estargz.TOCEntry) {
	queue := []loadTarget{{l, e, "/" + e.Name}}
	for n := 0; len(queue) > 0 && n < maxLoaderFiles && ctx.Err() == nil; n++ {
		t := queue[0]
		queue = queue[1:]
		deps, ok, err := elfdeps.Parse(&fileReader{ctx: ctx, l: t.l, e: t.e}, t.e.Size)
		if !ok || err != nil {
			if err != nil {
				log.G(ctx).WithError(err).WithFields(log.Fields{"layer": t.l.src.dgst, "file": t.e.Name}).Debug("no loader prefetch")
			}
			continue
		}
		if deps.Interp != "" {
			f.prefetchPaths(stack, deps.Interp, elfdeps.LdSoCache)
		}
		libs := elfdeps.Libraries("/"+t.e.Name, deps, func(p string) bool {
			_, e := lookupImage(stack, p)
			return e != nil
		})
		paths := make([]string, len(libs))
		private := map[string]bool{} // found in the program's run path
		for i, lib := range libs {
			paths[i], private[lib.Path] = lib.Path, lib.Private
		}
		found := f.prefetchPaths(stack, paths...)
		for i, d := range found {
			switch {
			case strings.HasPrefix(path.Base(d.e.Name), "libc.so."):
				f.prefetchLibc(stack, path.Dir("/"+d.e.Name))
			case private[d.path]:
				// A program's own library directory holds the
				// plugins it loads with dlopen next.
				found[i].l.prefetchSiblingLibs(d.e.Name)
			}
		}
		log.G(ctx).WithFields(log.Fields{"layer": t.l.src.dgst, "file": t.e.Name, "prefetching": len(found)}).Debug("loader prefetch")
		if n == 0 {
			// The loader maps all of the file, and the program touches
			// much of it: a library loaded with dlopen, which no other
			// file names, too. It comes after what it needs, which is
			// smaller and waited for first.
			l.prefetchFile(e)
		}
		queue = append(queue, found...)
	}
}

// libcFiles are what the GNU C library reads as a program starts to set
// its locale, convert characters or tell the time, one small file after
// another: paths in the image, and the C.UTF-8 locale's directories, that
// of a container whose image sets no other locale.
var (
	libcFiles      = []string{"/etc/localtime", "/etc/nsswitch.conf", "/usr/lib/locale/C.utf8/LC_CTYPE"}
	libcLocaleDirs = []string{"usr/lib/locale/C.utf8", "usr/lib/locale/C.utf8/LC_MESSAGES"}
)

// prefetchLibc starts fetching what the GNU C library in directory libDir
// reads as a program starts: libcFiles, the directories of libcLocaleDirs
// when they are small (WithDirPrefetch), and its gconv module cache.
func (f *FileSystem) prefetchLibc(stack []*layer, libDir string) {
	f.prefetchPaths(stack, append(libcFiles, path.Join(libDir, "gconv/gconv-modules.cache"))...)
	for _, dir := range libcLocaleDirs {
		for _, l := range stack {
			if d, ok := l.src.r.Lookup(dir); ok && d.Type == "dir" {
				l.dirPrefetch(dir + "/") // every file of dir
				break
			}
		}
	}
}

// prefetchFile starts fetching file e as readers would: whole, or its first
// and last chunks when it is large.
func (l *layer) prefetchFile(e *estargz.TOCEntry) {
	if e.Size <= 0 {
		return
	}
	cs, err := l.chunks(e, 0, e.Size)
	if err != nil || len(cs) == 0 {
		return
	}
	if cs[len(cs)-1].end-cs[0].start > maxLoaderWhole {
		cs = []chunk{cs[0], cs[len(cs)-1]}
	}
	l.startWindow(cs)
}

// fileReader reads a file of a layer for lazypull itself: the read-ahead
// policies, which learn from readers, do not see its reads.
type fileReader struct {
	ctx context.Context
	l   *layer
	e   *estargz.TOCEntry
}

var _ io.ReaderAt = (*fileReader)(nil)

func (r *fileReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := r.l.read(r.ctx, r.e, p, off, false)
	if err == nil && n < len(p) {
		err = io.EOF
	}
	return n, err
}
