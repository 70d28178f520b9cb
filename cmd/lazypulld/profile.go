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
// node, then in the registry, and prefetches its chunks of each layer of
// the image that is mounted; and it records a profile of images the node
// has none recorded of. It sees the layers as a prefetch policy of the
// layer filesystem (profilepolicy.go). Close stops its goroutines; those
// that prefetch belong to the layers they prefetch.
type profiler struct {
	cfg    config.Profile
	res    *remote.Resolver
	store  *profile.Store
	rec    *profile.Recorder
	client *profile.Client // nil without [profile] fetch
	now    func() time.Time
	layers mountedLayers

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

// newProfiler returns the profiler of cfg's [profile], reading manifests
// and profiles through res and the time from now; nil when it neither
// records nor fetches. Its policy (options) is to be given to the layer
// filesystem.
func newProfiler(cfg *config.Config, res *remote.Resolver, now func() time.Time) (*profiler, error) {
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
		Limits: lim, MaxSessions: profileSessions,
	}, now)
	if err != nil {
		return nil, err
	}
	p := &profiler{cfg: pc, res: res, store: store, rec: rec, now: now,
		layers: mountedLayers{m: map[digest.Digest][]*fs.Layer{}},
		sem:    make(chan struct{}, profileLookups), images: map[digest.Digest]*imageProfile{}}
	if pc.Fetch {
		if p.client, err = profile.NewClient(profileRegistry{res}, lim); err != nil {
			return nil, err
		}
	}
	p.life, p.cancel = context.WithCancel(context.Background())
	if pc.Record {
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
	// The layers the image shares with images mounted before are not
	// mounted again: their part of the profile is replayed too.
	im.replay.Mounted(p.layers.mounted(layers)...)
	rec, err := p.store.Get(layers)
	if err == nil {
		log.G(ctx).WithFields(log.Fields{"origin": rec.Origin, "chunks": len(rec.Profile.Reads)}).Info("applying the node's start-up profile")
		p.replay(ctx, md, im, im.replay.SetProfile(rec.Profile))
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
		if err := p.store.Put(&profile.Record{Origin: profile.Fetched, Ref: ref, Manifest: md, Created: p.now(), Profile: prof}); err != nil {
			log.G(ctx).WithError(err).Warn("cannot keep the start-up profile on the node")
		}
		p.replay(ctx, md, im, im.replay.SetProfile(prof))
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

// keep stores a recording.
func (p *profiler) keep(rec *profile.Record) {
	lg := log.G(p.life).WithFields(log.Fields{"ref": rec.Ref, "manifest": rec.Manifest})
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
