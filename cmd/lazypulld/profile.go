package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/config"
	"github.com/lazypull/lazypull/fs"
	"github.com/lazypull/lazypull/profile"
	"github.com/lazypull/lazypull/remote"
)

// Bounds of a data plane's profiler.
const (
	// profileImages bounds the images whose profiles are being looked up
	// or applied; beyond it, those done are forgotten.
	profileImages = 1024
	// profileLookups bounds the lookups (manifest, store, registry) at once.
	profileLookups = 8
	// profileSessions bounds the images recorded at once.
	profileSessions = 64
	// profileStart drops the recording of an image not run that long
	// after its layers were mounted.
	profileStart = 10 * time.Minute
	// profileTick is how often recordings are checked for their end.
	profileTick = 500 * time.Millisecond
)

// profiler is a data plane's start-up profiles ([profile]): when the
// layers of an image are mounted, it looks for the image's profile on the
// node, then in the registry, and has the layer filesystem prefetch its
// chunks as each layer is mounted; and it records a profile of images the
// node has none recorded of. Close stops its goroutines.
type profiler struct {
	cfg    config.Profile
	fsys   *fs.FileSystem
	res    *remote.Resolver
	store  *profile.Store
	rec    *profile.Recorder
	client *profile.Client // nil without [profile] fetch

	life   context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	sem    chan struct{}

	mu     sync.Mutex
	images map[digest.Digest]*imageProfile // by manifest digest
}

// imageProfile is the profile of an image being mounted.
type imageProfile struct {
	replay *profile.Replay
	looked bool // the lookup ended
}

// newProfiler returns the profiler of cfg's [profile], nil when it neither
// records nor fetches.
func newProfiler(cfg *config.Config, fsys *fs.FileSystem, res *remote.Resolver) (*profiler, error) {
	pc := cfg.Profile
	if !pc.Record && !pc.Fetch {
		return nil, nil
	}
	lim := profile.Limits{Size: pc.MaxSize.Int64(), Entries: pc.MaxEntries}
	store, err := profile.OpenStore(filepath.Join(cfg.Root, "profiles"), lim, pc.MaxProfiles)
	if err != nil {
		return nil, err
	}
	rec, err := profile.NewRecorder(profile.RecorderConfig{
		Window: pc.Window.Duration, Idle: pc.Idle.Duration, Start: profileStart,
		Events: fs.ReadEventsWired, Limits: lim, MaxSessions: profileSessions,
	}, time.Now)
	if err != nil {
		return nil, err
	}
	p := &profiler{cfg: pc, fsys: fsys, res: res, store: store, rec: rec,
		sem: make(chan struct{}, profileLookups), images: map[digest.Digest]*imageProfile{}}
	if pc.Fetch {
		if p.client, err = profile.NewClient(profileRegistry{res}, lim); err != nil {
			return nil, err
		}
	}
	p.life, p.cancel = context.WithCancel(context.Background())
	if pc.Record {
		if fs.ReadEventsWired {
			fsys.SetReadObserver(rec)
		}
		p.wg.Add(1)
		go p.expire()
	}
	return p, nil
}

// Close stops the profiler's lookups and recordings (those not ended are
// lost) and waits for its goroutines.
func (p *profiler) Close() {
	if p == nil {
		return
	}
	p.mu.Lock() // no lookup starts after this
	p.cancel()
	p.mu.Unlock()
	p.wg.Wait()
	p.fsys.SetReadObserver(nil)
}

// mounting is told of a layer about to be mounted: the first layer of an
// image starts the lookup of its profile, and its recording.
func (p *profiler) mounting(ctx context.Context, labels map[string]string) {
	if p == nil {
		return
	}
	md, err := digest.Parse(labels[fs.LabelManifestDigest])
	ref := labels[fs.LabelImageRef]
	if err != nil || ref == "" {
		return
	}
	p.mu.Lock()
	if _, ok := p.images[md]; ok || p.life.Err() != nil {
		p.mu.Unlock()
		return
	}
	if len(p.images) >= profileImages {
		for d, im := range p.images {
			if im.looked && !im.replay.Pending() {
				delete(p.images, d)
			}
		}
		if len(p.images) >= profileImages {
			p.mu.Unlock()
			return
		}
	}
	im := &imageProfile{replay: profile.NewReplay()}
	p.images[md] = im
	p.wg.Add(1)
	p.mu.Unlock()
	lg := log.G(ctx).WithFields(log.Fields{"ref": ref, "manifest": md})
	go func() {
		defer p.wg.Done()
		select {
		case p.sem <- struct{}{}:
			defer func() { <-p.sem }()
		case <-p.life.Done():
			return
		}
		ctx := log.WithLogger(p.life, lg)
		p.lookup(ctx, ref, md, im)
		p.mu.Lock()
		im.looked = true
		p.mu.Unlock()
	}()
}

// mounted is told of a layer mounted: the profile's chunks of it, if the
// profile is known, are prefetched.
func (p *profiler) mounted(ctx context.Context, labels map[string]string) {
	if p == nil {
		return
	}
	md, err1 := digest.Parse(labels[fs.LabelManifestDigest])
	layer, err2 := digest.Parse(labels[fs.LabelLayerDigest])
	if err1 != nil || err2 != nil {
		return
	}
	p.mu.Lock()
	im := p.images[md]
	p.mu.Unlock()
	if im != nil {
		p.prefetch(ctx, md, im, im.replay.Mounted(layer))
	}
}

// lookup reads the layers of image md and applies its profile: the node's,
// else the registry's; and starts recording the image if the node has not
// recorded it.
func (p *profiler) lookup(ctx context.Context, ref string, md digest.Digest, im *imageProfile) {
	layers, err := p.imageLayers(ctx, ref, md)
	if err != nil {
		log.G(ctx).WithError(err).Debug("no start-up profile: image layers unknown")
		im.replay.Stop()
		return
	}
	if p.cfg.Record && !p.store.Has(profile.Recorded, layers) && p.rec.Begin(ref, md, layers) {
		log.G(ctx).Debug("recording a start-up profile")
	}
	rec, err := p.store.Get(layers)
	if err == nil {
		log.G(ctx).WithFields(log.Fields{"origin": rec.Origin, "chunks": len(rec.Profile.Reads)}).Info("applying the node's start-up profile")
		p.prefetch(ctx, md, im, im.replay.SetProfile(rec.Profile))
		return
	}
	if !errdefs.IsNotFound(err) || errdefs.IsInvalidArgument(err) {
		log.G(ctx).WithError(err).Warn("ignoring a stored start-up profile")
	}
	if p.client == nil {
		im.replay.Stop()
		return
	}
	prof, art, err := p.client.Fetch(ctx, ref, md)
	switch {
	case errdefs.IsNotFound(err):
		log.G(ctx).Debug("no start-up profile published")
	case err != nil:
		log.G(ctx).WithError(err).Warn("ignoring the start-up profile published in the registry")
	case !slices.Equal(prof.Layers, layers):
		log.G(ctx).WithField("profile", art).Warn("ignoring the start-up profile published in the registry: it is for other layers than the image's")
	default:
		log.G(ctx).WithFields(log.Fields{"profile": art, "chunks": len(prof.Reads)}).Info("applying the registry's start-up profile")
		if err := p.store.Put(&profile.Record{Origin: profile.Fetched, Ref: ref, Manifest: md, Created: time.Now(), Profile: prof}); err != nil {
			log.G(ctx).WithError(err).Warn("cannot keep the start-up profile on the node")
		}
		p.prefetch(ctx, md, im, im.replay.SetProfile(prof))
		return
	}
	im.replay.Stop()
}

// imageLayers returns the layers of manifest md of ref, bottom first.
func (p *profiler) imageLayers(ctx context.Context, ref string, md digest.Digest) ([]digest.Digest, error) {
	raw, err := p.res.Manifest(ctx, ref, md)
	if err != nil {
		return nil, err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("manifest %s: %w: %w", md, err, errdefs.ErrInvalidArgument)
	}
	if len(m.Layers) == 0 || len(m.Layers) > profile.MaxLayers {
		return nil, fmt.Errorf("manifest %s: %d layers: %w", md, len(m.Layers), errdefs.ErrInvalidArgument)
	}
	layers := make([]digest.Digest, len(m.Layers))
	for i, l := range m.Layers {
		layers[i] = l.Digest
	}
	return layers, nil
}

// prefetch has the layer filesystem prefetch cs; a profile whose chunks
// the layers do not have is stopped, with a warning.
func (p *profiler) prefetch(ctx context.Context, md digest.Digest, im *imageProfile, cs []profile.Chunk) {
	if len(cs) == 0 {
		return
	}
	pcs := make([]fs.ProfileChunk, len(cs))
	for i, c := range cs {
		pcs[i] = fs.ProfileChunk(c)
	}
	if err := p.fsys.PrefetchProfile(ctx, pcs); err != nil {
		im.replay.Stop()
		log.G(ctx).WithError(err).WithField("manifest", md).Warn("ignoring the start-up profile: it does not fit the image's layers")
		return
	}
	log.G(ctx).WithFields(log.Fields{"manifest": md, "layer": cs[0].Layer, "chunks": len(cs)}).Debug("prefetching the start-up profile")
}

// expire ends recordings as their time comes and keeps what they found.
func (p *profiler) expire() {
	defer p.wg.Done()
	t := time.NewTicker(profileTick)
	defer t.Stop()
	for {
		select {
		case <-p.life.Done():
			return
		case <-t.C:
		}
		for _, rec := range p.rec.Expire() {
			p.keep(rec)
		}
	}
}

// keep stores a recording. Without read events it holds no reads: the
// layer filesystem tells which chunks readers of its layers asked for.
func (p *profiler) keep(rec *profile.Record) {
	lg := log.G(p.life).WithFields(log.Fields{"ref": rec.Ref, "manifest": rec.Manifest})
	if len(rec.Profile.Reads) == 0 && !fs.ReadEventsWired {
		rec.Profile.Reads = p.readChunks(rec.Profile.Layers)
	}
	if len(rec.Profile.Reads) == 0 {
		lg.Debug("start-up profile: nothing was read")
		return
	}
	if err := p.store.Put(rec); err != nil {
		lg.WithError(err).Warn("cannot keep the start-up profile recorded")
		return
	}
	lg.WithField("chunks", len(rec.Profile.Reads)).Info("start-up profile recorded")
}

// readChunks is what readers read of the mounted layers, bottom first,
// each layer's in blob order, within the entry limit.
func (p *profiler) readChunks(layers []digest.Digest) []profile.Read {
	var reads []profile.Read
	seen := map[digest.Digest]bool{}
	for i, d := range layers {
		if seen[d] {
			continue
		}
		seen[d] = true
		cs, err := p.fsys.ReadChunks(d)
		if err != nil {
			continue // not mounted lazily: nothing to prefetch
		}
		for _, c := range cs {
			if len(reads) >= p.cfg.MaxEntries {
				return reads
			}
			reads = append(reads, profile.Read{Layer: i, Path: c.Path, Offset: c.Offset})
		}
	}
	return reads
}

// profileRegistry gives profile's Client the registry client's hosts.
type profileRegistry struct{ r *remote.Resolver }

func (p profileRegistry) Endpoints(ctx context.Context, ref string, push bool) ([]profile.Endpoint, error) {
	hs, err := p.r.RepositoryHosts(ref, push)
	if err != nil {
		return nil, err
	}
	eps := make([]profile.Endpoint, len(hs))
	for i, h := range hs {
		eps[i] = profile.Endpoint(h)
	}
	return eps, nil
}
