package fs

import (
	"context"
	"fmt"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

// maxImagesMemory bounds the images remembered.
const maxImagesMemory = 1 << 16

// images remembers the layers of each image mounted, from the image-layers
// labels, so that a file's dependencies are looked up in the image it
// belongs to.
type images struct {
	mu    sync.Mutex
	lists [][]digest.Digest // bottom layer first
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

// image is the mounted layers of an image, top first.
type image []*Layer

// stack returns the mounted layers of l's image: the longest image known
// to hold l, or l alone.
func (f *FileSystem) stack(l *layer) image {
	f.images.mu.Lock()
	var list []digest.Digest
	for _, ds := range f.images.lists {
		if len(ds) > len(list) && slices.Contains(ds, l.src.dgst) {
			list = ds
		}
	}
	f.images.mu.Unlock()
	if list == nil {
		return image{l.view}
	}
	stack, _ := f.mountedStack(list, l)
	return stack
}

// mountedStack returns the layers of list (bottom first) that are mounted,
// or among known, top first, and the channel that is closed when a mount
// is added.
func (f *FileSystem) mountedStack(list []digest.Digest, known ...*layer) (image, <-chan struct{}) {
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
	stack := make(image, 0, len(list))
	for _, d := range slices.Backward(list) {
		if ml, ok := byDigest[d]; ok {
			stack = append(stack, ml.view)
		}
	}
	return stack, changed
}

// lookup returns the regular file at p in the merged tree of the image,
// following symlinks as the kernel would; nil if there is none. A whiteout
// or an opaque directory hides what lies below it.
func (stack image) lookup(p string) (*Layer, *estargz.TOCEntry) {
	for range 40 { // symlinks followed, as the kernel's bound
		comps := strings.Split(strings.TrimPrefix(path.Clean("/"+p), "/"), "/")
		var next string
		for i := range comps {
			name := strings.Join(comps[:i+1], "/")
			l, e := stack.top(name)
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

// top returns the entry at name of the top-most layer that has one, or nil
// when there is none or a whiteout hides it.
func (stack image) top(name string) (*Layer, *estargz.TOCEntry) {
	dir, base := path.Split(name)
	for _, l := range stack {
		if e, ok := l.Lookup(name); ok {
			return l, e
		}
		if _, ok := l.Lookup(dir + whiteoutPrefix + base); ok {
			return nil, nil
		}
		if _, ok := l.Lookup(dir + opaqueMarker); ok {
			return nil, nil
		}
	}
	return nil, nil
}

// mountWait bounds the wait for an image's other layers to be mounted:
// containerd mounts them one after another, quickly.
const mountWait = 30 * time.Second

// waitMounted waits until every layer of layers (bottom first) is mounted,
// and returns them top first.
func (f *FileSystem) waitMounted(ctx context.Context, layers []digest.Digest) (image, error) {
	deadline := time.NewTimer(mountWait)
	defer deadline.Stop()
	for {
		stack, changed := f.mountedStack(layers)
		if len(stack) == len(layers) {
			return stack, nil
		}
		select {
		case <-changed:
		case <-deadline.C:
			return nil, fmt.Errorf("%d of the image's %d layers mounted lazily: %w", len(stack), len(layers), errdefs.ErrUnavailable)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
