package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/snapshotter"
)

// pollEvery is how often a pull's progress is read from containerd.
const pollEvery = 100 * time.Millisecond

// pullProgress shows what becomes of each layer of a pull, the way ctr
// and nerdctl show downloads: it learns the layers from the manifest and
// their chain IDs from the config as the pull handles them (handler), and
// reads, until stopped, containerd's downloads in progress and the
// snapshotter's snapshots of the layers.
type pullProgress struct {
	view *progressView
	cs   content.Store
	sn   statter

	mu       sync.Mutex
	layers   []ocispec.Descriptor
	chainIDs []digest.Digest // once the config was read
	final    map[int]bool    // rows that reached their last state
}

func newPullProgress(view *progressView, cs content.Store, sn statter) *pullProgress {
	return &pullProgress{view: view, cs: cs, sn: sn, final: map[int]bool{}}
}

// wrap is an image handler wrapper (inside containerd's unpacker, which
// keeps the layers to itself) that notes the manifest's layers and the
// config's DiffIDs.
func (p *pullProgress) wrap(h images.Handler) images.Handler {
	return images.HandlerFunc(func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		children, err := h.Handle(ctx, desc)
		if err != nil {
			return children, err
		}
		switch {
		case images.IsManifestType(desc.MediaType):
			var layers []ocispec.Descriptor
			for _, c := range children {
				if images.IsLayerType(c.MediaType) {
					layers = append(layers, c)
				}
			}
			p.mu.Lock()
			if p.layers == nil {
				p.layers = layers
			}
			p.mu.Unlock()
		case images.IsConfigType(desc.MediaType):
			p.noteConfig(ctx, desc)
		}
		return children, nil
	})
}

// noteConfig reads the chain IDs of the layers from the config.
func (p *pullProgress) noteConfig(ctx context.Context, desc ocispec.Descriptor) {
	b, err := content.ReadBlob(ctx, p.cs, desc)
	if err != nil {
		return
	}
	var cfg ocispec.Image
	if json.Unmarshal(b, &cfg) != nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.chainIDs == nil {
		p.chainIDs = identity.ChainIDs(append([]digest.Digest(nil), cfg.RootFS.DiffIDs...))
	}
}

// run shows the progress until ctx ends, then once more.
func (p *pullProgress) run(ctx context.Context) {
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			p.poll(context.WithoutCancel(ctx))
			return
		case <-t.C:
			p.poll(ctx)
		}
	}
}

// poll shows where each layer stands.
func (p *pullProgress) poll(ctx context.Context) {
	p.mu.Lock()
	layers, chainIDs := p.layers, p.chainIDs
	p.mu.Unlock()
	if len(layers) == 0 {
		return
	}
	ingests := map[string]content.Status{}
	if sts, err := p.cs.ListStatuses(ctx); err == nil {
		for _, st := range sts {
			ingests[st.Ref] = st
		}
	}
	for i, l := range layers {
		if p.final[i] {
			continue
		}
		phase, detail, st := "waiting", "", rowQueued
		if len(chainIDs) == len(layers) {
			phase, detail, st = p.layerState(ctx, l, chainIDs[i], ingests)
		}
		if st == rowFinal {
			p.final[i] = true
		}
		what := fmt.Sprintf("layer %d/%d %s %s", i+1, len(layers), short(l.Digest.String()), phase)
		p.view.show(viewEvent{key: l.Digest.String(), phase: phase, state: st, line: func(counters bool) string {
			if counters && detail != "" {
				return what + " " + detail
			}
			return what
		}})
	}
}

// layerState says where layer l, of chain ID chain, stands.
func (p *pullProgress) layerState(ctx context.Context, l ocispec.Descriptor, chain digest.Digest, ingests map[string]content.Status) (phase, detail string, st rowState) {
	info, err := p.sn.Stat(ctx, chain.String())
	switch {
	case err == nil && info.Labels[snapshotter.LabelRemote] == "true":
		return "mounted lazily", "", rowFinal
	case err == nil:
		return "pulled", human(l.Size), rowFinal
	case !errdefs.IsNotFound(err):
		return "waiting", "", rowQueued
	}
	if in, ok := ingests[remotes.MakeRefKey(ctx, l)]; ok {
		return "downloading", fmt.Sprintf("%s/%s", human(in.Offset), human(in.Total)), rowActive
	}
	if _, err := p.cs.Info(ctx, l.Digest); err == nil {
		return "applying", "", rowActive
	}
	return "waiting", "", rowQueued
}

// followPull starts showing the progress of a pull on w (live on a
// terminal, a line per change elsewhere; nothing with quiet) and returns
// the pull's handler wrapper, around wrap, and the function that stops it
// once the pull returned.
func followPull(ctx context.Context, w io.Writer, quiet bool, cs content.Store, sn statter, wrap func(images.Handler) images.Handler) (func(images.Handler) images.Handler, func()) {
	if quiet {
		return wrap, func() {}
	}
	view := newProgressView(w, isTerminal(w))
	p := newPullProgress(view, cs, sn)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.run(ctx)
	}()
	return func(h images.Handler) images.Handler { return wrap(p.wrap(h)) }, func() {
		cancel()
		<-done
		view.close()
	}
}
