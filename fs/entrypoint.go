package fs

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// The program a container of an image runs is, unless its creator says
// otherwise, the image's entrypoint. Once the image's layers are mounted,
// the FileSystem loads it ahead of the container: its first chunk, then
// what the loader will open for it (see loaderPrefetch), while the runtime
// is still creating the container.

// LabelManifestDigest is the label holding the digest of the manifest of
// the image being unpacked, for the platform pulled.
const LabelManifestDigest = "containerd.io/snapshot/cri.manifest-digest"

// ManifestReader is implemented by an Opener that also reads manifests.
// With one, the FileSystem prefetches an image's entrypoint (with
// WithLoaderPrefetch).
type ManifestReader interface {
	// Manifest returns the manifest dgst of the repository of ref,
	// checked against dgst.
	Manifest(ctx context.Context, ref string, dgst digest.Digest) ([]byte, error)
}

// Bounds of the entrypoint prefetch.
const (
	// maxImageConfig is the largest image configuration read.
	maxImageConfig = 1 << 20
	// entrypointWait bounds the wait for the image's other layers to be
	// mounted: containerd mounts them one after another, quickly.
	entrypointWait = 30 * time.Second
	// entrypointHead is what is read of the program to find what the
	// loader opens for it: its headers.
	entrypointHead = 64 << 10
)

// defaultPath is the PATH of a container whose image sets none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// prefetchEntrypoint starts, once per image, loading the program that the
// image of manifest label runs, when the image's layers are all mounted.
func (f *FileSystem) prefetchEntrypoint(ctx context.Context, ref, label string) {
	mr, ok := f.opener.(ManifestReader)
	if !ok || !f.cfg.loaderPrefetch {
		return
	}
	md, err := digest.Parse(label)
	if err != nil || !f.images.first("manifest/"+md.String()) {
		return
	}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.wg.Add(1)
	f.mu.Unlock()
	go func() {
		defer f.wg.Done()
		ctx := log.WithLogger(f.life, log.G(ctx).WithFields(log.Fields{"ref": ref, "manifest": md}))
		defer f.recovered(ctx, "entrypoint prefetch", nil)
		if err := f.loadEntrypoint(ctx, mr, ref, md); err != nil && ctx.Err() == nil {
			log.G(ctx).WithError(err).Debug("no entrypoint prefetch")
		}
	}()
}

func (f *FileSystem) loadEntrypoint(ctx context.Context, mr ManifestReader, ref string, md digest.Digest) error {
	m, img, err := f.imageConfig(ctx, mr, ref, md)
	if err != nil {
		return err
	}
	argv := append(slices.Clone(img.Config.Entrypoint), img.Config.Cmd...)
	if len(argv) == 0 {
		return nil
	}
	layers := make([]digest.Digest, len(m.Layers))
	for i, d := range m.Layers {
		layers[i] = d.Digest
	}
	stack, err := f.waitMounted(ctx, layers)
	if err != nil {
		return err
	}
	f.images.noteList(layers)
	prog := findProgram(stack, argv[0], img.Config.Env, img.Config.WorkingDir)
	for range 2 { // a script, then its interpreter
		l, e := lookupImage(stack, prog)
		if e == nil {
			return fmt.Errorf("program %s not found in the image: %w", prog, errdefs.ErrNotFound)
		}
		// All of it at once: the loader reads its dynamic section, often
		// chunks away from its start, before it opens anything else.
		l.prefetchFile(e)
		head := make([]byte, min(e.Size, entrypointHead))
		n, err := (&fileReader{ctx: ctx, l: l, e: e}).ReadAt(head, 0)
		if err != nil && n == 0 {
			return fmt.Errorf("program %s: %w", prog, err)
		}
		head = head[:n]
		log.G(ctx).WithFields(log.Fields{"layer": l.src.dgst, "file": e.Name}).Debug("entrypoint prefetch")
		interp, ok := scriptInterpreter(head)
		if !ok {
			l.loaderPrefetch(e.Name, head)
			return nil
		}
		prog = interp
	}
	return nil
}

// imageConfig reads the manifest md of ref and the image configuration it
// names, each checked against its digest.
func (f *FileSystem) imageConfig(ctx context.Context, mr ManifestReader, ref string, md digest.Digest) (*ocispec.Manifest, *ocispec.Image, error) {
	raw, err := mr.Manifest(ctx, ref, md)
	if err != nil {
		return nil, nil, err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil || m.Config.Digest == "" {
		return nil, nil, fmt.Errorf("manifest %s is not an image manifest: %w", md, errdefs.ErrInvalidArgument)
	}
	cd := m.Config.Digest
	if err := cd.Validate(); err != nil || m.Config.Size <= 0 || m.Config.Size > maxImageConfig {
		return nil, nil, fmt.Errorf("manifest %s: config %s of %d bytes: %w", md, cd, m.Config.Size, errdefs.ErrInvalidArgument)
	}
	_, data, err := f.opener.Open(ctx, ref, cd, m.Config.Size)
	if err != nil {
		return nil, nil, fmt.Errorf("config %s: %w", cd, err)
	}
	if int64(len(data)) != m.Config.Size || cd.Algorithm().FromBytes(data) != cd {
		return nil, nil, fmt.Errorf("config %s does not match its digest: %w", cd, errdefs.ErrDataLoss)
	}
	var img ocispec.Image
	if err := json.Unmarshal(data, &img); err != nil {
		return nil, nil, fmt.Errorf("config %s: %v: %w", cd, err, errdefs.ErrInvalidArgument)
	}
	return &m, &img, nil
}

// waitMounted waits until every layer of layers (bottom first) is mounted,
// and returns them top first.
func (f *FileSystem) waitMounted(ctx context.Context, layers []digest.Digest) ([]*layer, error) {
	deadline := time.NewTimer(entrypointWait)
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

// findProgram returns the path of program argv0 as the runtime finds it:
// as is when absolute, in the working directory when relative, else in
// the image's PATH.
func findProgram(stack []*layer, argv0 string, env []string, dir string) string {
	if path.IsAbs(argv0) {
		return path.Clean(argv0)
	}
	if strings.Contains(argv0, "/") {
		return path.Join("/", dir, argv0)
	}
	search := defaultPath
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			search = v
		}
	}
	for _, d := range strings.Split(search, ":") {
		p := path.Join("/", d, argv0)
		if _, e := lookupImage(stack, p); e != nil && e.Mode&0o111 != 0 {
			return p
		}
	}
	return path.Join("/usr/bin", argv0)
}

// scriptInterpreter returns the interpreter of a script that starts with
// "#!", as the kernel reads it.
func scriptInterpreter(head []byte) (string, bool) {
	rest, ok := bytes.CutPrefix(head, []byte("#!"))
	if !ok {
		return "", false
	}
	if i := bytes.IndexByte(rest, '\n'); i >= 0 {
		rest = rest[:i]
	}
	fields := strings.Fields(string(rest))
	if len(fields) == 0 || !path.IsAbs(fields[0]) {
		return "", false
	}
	return fields[0], true
}
