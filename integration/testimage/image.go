package testimage

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Image assembles a Docker schema 2 image (gzip layers, Docker media types)
// for the running platform from layers, with the given entrypoint.
func Image(layers []Layer, entrypoint []string) (v1.Image, error) {
	img := empty.Image
	for i, l := range layers {
		gz, err := l.Gzip()
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(gz)), nil
		}, tarball.WithMediaType(types.DockerLayer))
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		if img, err = mutate.AppendLayers(img, layer); err != nil {
			return nil, err
		}
	}
	return withEntrypoint(img, entrypoint)
}

// withEntrypoint sets img's platform to the running one, its entrypoint
// and a PATH of /bin.
func withEntrypoint(img v1.Image, entrypoint []string) (v1.Image, error) {
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", runtime.GOARCH
	cfg.Config.Entrypoint = entrypoint
	cfg.Config.Env = []string{"PATH=/bin"}
	return mutate.ConfigFile(img, cfg)
}

// Push writes img to ref (e.g. "127.0.0.1:5000/lazypull/test:1") over plain
// HTTP and returns the manifest digest.
func Push(ctx context.Context, ref string, img v1.Image) (v1.Hash, error) {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return v1.Hash{}, err
	}
	if err := remote.Write(r, img, remote.WithContext(ctx)); err != nil {
		return v1.Hash{}, fmt.Errorf("push %s: %w", ref, err)
	}
	return img.Digest()
}

// Lookup returns the node that path p (absolute or relative to the root)
// names in t, following symlinks like the kernel does inside a container
// whose root is t.
func (t Tree) Lookup(p string) (*Node, error) {
	return t.lookup(p, 0)
}

func (t Tree) lookup(p string, depth int) (*Node, error) {
	if depth > 40 {
		return nil, fmt.Errorf("%s: too many levels of symbolic links", p)
	}
	parts := strings.Split(strings.Trim(path.Clean("/"+p), "/"), "/")
	cur := "."
	for i, part := range parts {
		if part == "" {
			continue
		}
		next := path.Join(cur, part)
		n, ok := t[next]
		if !ok {
			return nil, fmt.Errorf("%s: %s does not exist", p, next)
		}
		if n.Type == TypeSymlink {
			target := n.Linkname
			if !path.IsAbs(target) {
				target = path.Join("/", cur, target)
			}
			rest := path.Join(append([]string{target}, parts[i+1:]...)...)
			return t.lookup(rest, depth+1)
		}
		cur = next
	}
	n, ok := t[cur]
	if !ok {
		return nil, fmt.Errorf("%s: does not exist", p)
	}
	return n, nil
}
