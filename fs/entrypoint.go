package fs

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// The program a container of an image runs is, unless its creator says
// otherwise, the image's entrypoint. Once the image's layers are mounted,
// the entrypoint policy loads it ahead of the container: its first chunk,
// announced to the other policies (the loader's and the start files'), so
// that what the loader will open for it is fetched while the runtime is
// still creating the container.

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
	// entrypointHead is what is read of the program to find what the
	// loader opens for it: its headers.
	entrypointHead = 64 << 10
)

// defaultPath is the PATH of a container whose image sets none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// entrypointPolicy is the entrypoint prefetch (WithLoaderPrefetch, with
// an Opener that is a ManifestReader).
type entrypointPolicy struct {
	opener    Opener
	manifests ManifestReader
	// waitMounted returns the image's layers once they are all mounted.
	waitMounted func(ctx context.Context, layers []digest.Digest) (image, error)
	noteImage   func(layers []digest.Digest)
	// spawn runs a goroutine of the FileSystem's: the image outlives the
	// layer whose mount started its prefetch.
	spawn func(what string, fn func(ctx context.Context)) bool
	seen  onceSet // manifests whose entrypoint was loaded
}

func (p *entrypointPolicy) Name() string { return "entrypoint" }

// Attach starts, once per image, loading the program that the image of
// the layer's manifest label runs, when the image's layers are all mounted.
func (p *entrypointPolicy) Attach(ctx context.Context, l *Layer, labels map[string]string) any {
	md, err := digest.Parse(labels[LabelManifestDigest])
	if err != nil || !p.seen.first(md.String()) {
		return nil
	}
	ref := labels[LabelImageRef]
	lg := log.G(ctx).WithFields(log.Fields{"ref": ref, "manifest": md})
	p.spawn("entrypoint prefetch", func(ctx context.Context) {
		ctx = log.WithLogger(ctx, lg)
		if err := p.load(ctx, ref, md); err != nil && ctx.Err() == nil {
			log.G(ctx).WithError(err).Debug("no entrypoint prefetch")
		}
	})
	return nil
}

func (p *entrypointPolicy) load(ctx context.Context, ref string, md digest.Digest) error {
	m, img, err := p.imageConfig(ctx, ref, md)
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
	stack, err := p.waitMounted(ctx, layers)
	if err != nil {
		return err
	}
	p.noteImage(layers)
	prog := findProgram(stack, argv[0], img.Config.Env, img.Config.WorkingDir)
	for range 2 { // a script, then its interpreter
		l, e := stack.lookup(prog)
		if e == nil {
			return fmt.Errorf("program %s not found in the image: %w", prog, errdefs.ErrNotFound)
		}
		// All of it at once: the loader reads its dynamic section, often
		// chunks away from its start, before it opens anything else.
		l.fetchFile(e)
		head := make([]byte, min(e.Size, entrypointHead))
		n, err := l.ReadAt(ctx, e.Name, head, 0)
		if err != nil && n == 0 {
			return fmt.Errorf("program %s: %w", prog, err)
		}
		head = head[:n]
		log.G(ctx).WithFields(log.Fields{"layer": l.Digest(), "file": e.Name}).Debug("entrypoint prefetch")
		interp, ok := scriptInterpreter(head)
		if !ok {
			l.Announce(e.Name, head)
			return nil
		}
		prog = interp
	}
	return nil
}

// imageConfig reads the manifest md of ref and the image configuration it
// names, each checked against its digest.
func (p *entrypointPolicy) imageConfig(ctx context.Context, ref string, md digest.Digest) (*ocispec.Manifest, *ocispec.Image, error) {
	raw, err := p.manifests.Manifest(ctx, ref, md)
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
	_, data, err := p.opener.Open(ctx, ref, cd, m.Config.Size)
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

// findProgram returns the path of program argv0 as the runtime finds it:
// as is when absolute, in the working directory when relative, else in
// the image's PATH.
func findProgram(stack image, argv0 string, env []string, dir string) string {
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
		if _, e := stack.lookup(p); e != nil && e.Mode&0o111 != 0 {
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
