package main

import (
	"context"
	"errors"
	"strings"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
)

// A pull of an image whose layers another namespace (or an image pulled
// before) has mounted and verified mounts nothing new: the snapshotter
// answers from the committed snapshot. containerd tells of the image
// itself: the blob keeper watches images being created and updated, and
// gives the namespace the blobs of verified layers it references and
// lacks.

// imageTopics are the events after which an image's manifest references
// its layers.
var imageTopics = []string{`topic=="/images/create"`, `topic=="/images/update"`}

// watchImages gives each namespace where an image is created or updated
// the verified blobs it lacks, until ctx ends.
func (k *blobKeeper) watchImages(ctx context.Context) {
	retry := minVerdictRetry
	for {
		err := k.watchImagesOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		log.G(ctx).WithError(err).WithField("retry_in", retry).Debug("blob keeper: cannot watch containerd's images")
		if !sleep(ctx, retry) {
			return
		}
		retry = min(2*retry, maxVerdictRetry)
	}
}

// watchImagesOnce watches images on one connection to containerd.
func (k *blobKeeper) watchImagesOnce(ctx context.Context) error {
	c, err := dialContainerd(ctx, k.address)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	evs, errs := c.Subscribe(ctx, imageTopics...)
	for {
		select {
		case ev, ok := <-evs:
			if !ok {
				return errors.New("containerd closed the event stream")
			}
			k.fillNamespace(ctx, c, ev.Namespace)
		case err := <-errs:
			return err
		}
	}
}

// fillNamespace gives namespace ns the blobs of the verified layers that
// its content references and its content store lacks.
func (k *blobKeeper) fillNamespace(ctx context.Context, c *client.Client, ns string) {
	k.mu.Lock()
	verified := make(map[string]string, len(k.verified))
	for d, ref := range k.verified {
		verified[d.String()] = ref
	}
	k.mu.Unlock()
	if len(verified) == 0 {
		return
	}
	nctx := namespaces.WithNamespace(ctx, ns)
	have, wanted := map[string]bool{}, map[string]bool{}
	err := c.ContentStore().Walk(nctx, func(info content.Info) error {
		have[info.Digest.String()] = true
		for key, v := range info.Labels {
			if _, ok := verified[v]; ok && strings.HasPrefix(key, gcContentRef) {
				wanted[v] = true
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		log.G(ctx).WithError(err).WithField("namespace", ns).Warn("blob keeper: cannot list content")
		return
	}
	for d := range wanted {
		if !have[d] {
			k.keep(ctx, digest.Digest(d), verified[d])
		}
	}
}
