// Package convert turns a container image in a registry into an eStargz
// image in a registry: every layer is rebuilt with estargz.Build, annotated
// with its TOC digest and uncompressed size, and the config's DiffIDs are
// updated; everything else in the manifests, configs and index (history,
// annotations, platforms) is kept. It imports no other package of lazypull.
package convert

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Result describes what Convert pushed.
type Result struct {
	// Digest, MediaType and Size of the manifest or index pushed to the
	// destination reference.
	Digest    v1.Hash
	MediaType types.MediaType
	Size      int64
	// Images are the converted image manifests, in index order.
	Images []ImageResult
	// Skipped lists the index entries left out, with the reason.
	Skipped []Skipped
}

// ImageResult describes one converted image manifest.
type ImageResult struct {
	Platform string
	// Source and Digest are the manifest digests before and after.
	Source, Digest v1.Hash
	Layers         []LayerResult
}

// Skipped is an index entry left out of the converted index.
type Skipped struct {
	Digest   v1.Hash
	Platform string
	Reason   string
}

type converter struct {
	cfg      *config
	dst      name.Reference
	pusher   *remote.Pusher
	tmp      string
	abort    context.CancelFunc
	sem      chan struct{}
	progress sync.Mutex // serializes calls of cfg.progress

	mu   sync.Mutex
	jobs map[v1.Hash]*layerJob
}

// Convert reads the image or index src from its registry, converts it to
// eStargz and pushes the result to dst (both are references such as
// "registry.example/repo:tag"). Layers shared by several manifests are
// converted once. On error nothing is tagged at dst, though converted
// blobs may already have been uploaded; errors name the platform and the
// layer that failed.
func Convert(ctx context.Context, src, dst string, opts ...Opt) (*Result, error) {
	cfg := &config{jobs: DefaultJobs, keychain: authn.DefaultKeychain}
	for _, o := range opts {
		if err := o(cfg); err != nil {
			return nil, err
		}
	}
	var nopts []name.Option
	if cfg.plainHTTP {
		nopts = append(nopts, name.Insecure)
	}
	srcRef, err := name.ParseReference(src, nopts...)
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	dstRef, err := name.ParseReference(dst, nopts...)
	if err != nil {
		return nil, fmt.Errorf("destination: %w", err)
	}
	tmp, err := os.MkdirTemp(cfg.tempDir, "lazypull-convert-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ropts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(cfg.keychain)}
	if cfg.transport != nil {
		ropts = append(ropts, remote.WithTransport(cfg.transport))
	}
	if cfg.userAgent != "" {
		ropts = append(ropts, remote.WithUserAgent(cfg.userAgent))
	}
	// One puller and one pusher for the whole run share auth tokens and
	// remember which blobs are already uploaded.
	puller, err := remote.NewPuller(ropts...)
	if err != nil {
		return nil, err
	}
	pusher, err := remote.NewPusher(ropts...)
	if err != nil {
		return nil, err
	}
	ropts = append(ropts, remote.Reuse(puller), remote.Reuse(pusher))
	c := &converter{
		cfg: cfg, dst: dstRef, pusher: pusher, tmp: tmp, abort: cancel,
		sem: make(chan struct{}, cfg.jobs), jobs: map[v1.Hash]*layerJob{},
	}

	desc, err := remote.Get(srcRef, ropts...)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", srcRef, err)
	}
	switch {
	case desc.MediaType.IsIndex():
		return c.index(ctx, desc)
	case desc.MediaType.IsImage():
		img, err := desc.Image()
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", srcRef, err)
		}
		ir, pushed, err := c.image(ctx, img, nil, desc.Digest, true)
		if err != nil {
			return nil, err
		}
		return &Result{Digest: pushed.Digest, MediaType: pushed.MediaType, Size: pushed.Size, Images: []ImageResult{ir}}, nil
	default:
		return nil, fmt.Errorf("%s: media type %s is neither an image manifest nor an index", srcRef, desc.MediaType)
	}
}

// image converts one image manifest and pushes it, to the destination
// reference when top, else by digest. platform is the one the index gives,
// if any.
func (c *converter) image(ctx context.Context, img v1.Image, platform *v1.Platform, source v1.Hash, top bool) (ImageResult, v1.Descriptor, error) {
	fail := func(err error) (ImageResult, v1.Descriptor, error) {
		if platform != nil {
			return ImageResult{}, v1.Descriptor{}, fmt.Errorf("platform %s (manifest %s): %w", platform, source, err)
		}
		return ImageResult{}, v1.Descriptor{}, fmt.Errorf("manifest %s: %w", source, err)
	}
	man, err := img.Manifest()
	if err != nil {
		return fail(err)
	}
	rawMan, err := img.RawManifest()
	if err != nil {
		return fail(err)
	}
	mt, err := img.MediaType()
	if err != nil {
		return fail(err)
	}
	rawCfg, err := img.RawConfigFile()
	if err != nil {
		return fail(fmt.Errorf("config: %w", err))
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return fail(fmt.Errorf("config: %w", err))
	}
	if platform == nil {
		platform = cf.Platform()
		if !c.selected(platform) {
			return fail(fmt.Errorf("image platform %v does not match the requested platforms", platform))
		}
	}
	layers, err := img.Layers()
	if err != nil {
		return fail(err)
	}
	n := len(man.Layers)
	if len(layers) != n || len(cf.RootFS.DiffIDs) != n {
		return fail(fmt.Errorf("manifest has %d layers but config has %d diff_ids", n, len(cf.RootFS.DiffIDs)))
	}
	plat := ""
	if platform != nil {
		plat = platform.String()
	}

	results := make([]LayerResult, n)
	g := c.newGroup(ctx)
	for i, d := range man.Layers {
		ev := Progress{Platform: plat, Layer: i, Layers: n, Source: d.Digest}
		if !d.MediaType.IsDistributable() {
			results[i] = LayerResult{Source: d.Digest, SourceSize: d.Size, Digest: d.Digest, Size: d.Size, DiffID: cf.RootFS.DiffIDs[i]}
			ev.Reason = "non-distributable layer kept as is"
			c.emit(ev, PhaseSkipped, 0, 0, nil)
			continue
		}
		g.Go(func(ctx context.Context) error {
			r, err := c.layer(ctx, layers[i], d, ev)
			if err != nil {
				return fmt.Errorf("layer %d/%d (%s): %w", i+1, n, d.Digest, err)
			}
			results[i] = r
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return fail(err)
	}

	descs := make([]v1.Descriptor, n)
	diffIDs := make([]v1.Hash, n)
	byDigest := map[v1.Hash]v1.Descriptor{}
	for i, r := range results {
		descs[i] = layerDescriptor(man.Layers[i], r)
		diffIDs[i] = r.DiffID
		byDigest[descs[i].Digest] = descs[i]
	}
	newCfg, err := rewriteConfig(rawCfg, diffIDs)
	if err != nil {
		return fail(err)
	}
	cfgDigest, cfgSize, err := v1.SHA256(bytes.NewReader(newCfg))
	if err != nil {
		return fail(err)
	}
	newMan, err := rewriteManifest(rawMan, cfgDigest, cfgSize, descs)
	if err != nil {
		return fail(err)
	}
	out, err := partial.CompressedToImage(&image{manifest: newMan, config: newCfg, mediaType: mt, layers: byDigest})
	if err != nil {
		return fail(err)
	}
	dgst, size, err := v1.SHA256(bytes.NewReader(newMan))
	if err != nil {
		return fail(err)
	}
	ref := c.dst
	if !top {
		ref = c.dst.Context().Digest(dgst.String())
	}
	if err := c.pusher.Push(ctx, ref, out); err != nil {
		return fail(fmt.Errorf("push manifest: %w", err))
	}
	ir := ImageResult{Platform: plat, Source: source, Digest: dgst, Layers: results}
	return ir, v1.Descriptor{MediaType: mt, Digest: dgst, Size: size}, nil
}

// attestationType marks the manifests BuildKit adds to an index to hold
// provenance and SBOMs about another entry. They describe the source image
// by digest, which conversion changes, so they are left out.
const attestationType = "attestation-manifest"

func (c *converter) index(ctx context.Context, desc *remote.Descriptor) (*Result, error) {
	idx, err := desc.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("read index %s: %w", desc.Digest, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("read index %s: %w", desc.Digest, err)
	}
	res := &Result{MediaType: desc.MediaType}
	type entry struct {
		src  v1.Descriptor
		res  ImageResult
		desc v1.Descriptor
	}
	var entries []*entry
	g := c.newGroup(ctx)
	for _, m := range im.Manifests {
		plat := ""
		if m.Platform != nil {
			plat = m.Platform.String()
		}
		skip := ""
		switch {
		case m.Annotations["vnd.docker.reference.type"] == attestationType:
			skip = "attestation manifest: it describes the unconverted image"
		case m.MediaType.IsIndex():
			return nil, fmt.Errorf("index %s: nested index %s is not supported", desc.Digest, m.Digest)
		case !m.MediaType.IsImage():
			skip = fmt.Sprintf("media type %s is not an image manifest", m.MediaType)
		case !c.selected(m.Platform):
			skip = "platform not selected"
		}
		if skip != "" {
			res.Skipped = append(res.Skipped, Skipped{Digest: m.Digest, Platform: plat, Reason: skip})
			c.emit(Progress{Platform: plat, Layer: -1, Source: m.Digest, Reason: skip}, PhaseSkipped, 0, 0, nil)
			continue
		}
		e := &entry{src: m}
		entries = append(entries, e)
		g.Go(func(ctx context.Context) error {
			img, err := idx.Image(m.Digest)
			if err != nil {
				return fmt.Errorf("platform %s (manifest %s): %w", plat, m.Digest, err)
			}
			p := m.Platform
			if p == nil {
				p = &v1.Platform{}
			}
			e.res, e.desc, err = c.image(ctx, img, p, m.Digest, false)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if len(entries) == 0 {
		return nil, fmt.Errorf("index %s: no image manifest to convert (requested platforms: %v)", desc.Digest, c.cfg.platforms)
	}
	manifests := make([]v1.Descriptor, len(entries))
	for i, e := range entries {
		d := e.src
		d.MediaType, d.Digest, d.Size, d.Data, d.URLs = e.desc.MediaType, e.desc.Digest, e.desc.Size, nil, nil
		manifests[i] = d
		res.Images = append(res.Images, e.res)
	}
	raw, err := rewriteIndex(desc.Manifest, manifests)
	if err != nil {
		return nil, err
	}
	if res.Digest, res.Size, err = v1.SHA256(bytes.NewReader(raw)); err != nil {
		return nil, err
	}
	if err := c.pusher.Push(ctx, c.dst, rawManifest{raw: raw, mediaType: desc.MediaType}); err != nil {
		return nil, fmt.Errorf("push index: %w", err)
	}
	return res, nil
}

// selected reports whether an image of platform p is to be converted.
func (c *converter) selected(p *v1.Platform) bool {
	if len(c.cfg.platforms) == 0 {
		return true
	}
	if p == nil {
		return false
	}
	for _, want := range c.cfg.platforms {
		if p.Satisfies(want) {
			return true
		}
	}
	return false
}

func (c *converter) emit(ev Progress, phase Phase, bytes, total int64, err error) {
	if c.cfg.progress == nil {
		return
	}
	ev.Phase, ev.Bytes, ev.Total, ev.Err = phase, bytes, total, err
	c.progress.Lock()
	defer c.progress.Unlock()
	c.cfg.progress(ev)
}

// group runs functions in goroutines and returns the first error from
// Wait. The first error also calls abort, which cancels the whole
// conversion: registry requests of the other layers use the conversion's
// context, not the group's.
type group struct {
	parent context.Context
	ctx    context.Context
	cancel context.CancelFunc
	abort  func()
	wg     sync.WaitGroup
	mu     sync.Mutex
	err    error
}

func (c *converter) newGroup(ctx context.Context) *group {
	gctx, cancel := context.WithCancel(ctx)
	return &group{parent: ctx, ctx: gctx, cancel: cancel, abort: c.abort}
}

func (g *group) Go(fn func(context.Context) error) {
	g.wg.Go(func() {
		err := fn(g.ctx)
		if err == nil {
			return
		}
		g.mu.Lock()
		// Prefer the error that caused the cancellation to the errors of
		// the work it cancelled.
		if g.err == nil || (errors.Is(g.err, context.Canceled) && !errors.Is(err, context.Canceled)) {
			g.err = err
		}
		g.mu.Unlock()
		g.cancel()
		g.abort()
	})
}

func (g *group) Wait() error {
	g.wg.Wait()
	g.cancel()
	if g.err != nil {
		return g.err
	}
	return g.parent.Err()
}
