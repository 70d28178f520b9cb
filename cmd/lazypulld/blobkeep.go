package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/config"
	"github.com/lazypull/lazypull/dataplane"
	"github.com/lazypull/lazypull/fs"
	"github.com/lazypull/lazypull/remote"
)

// A layer whose blob was verified before (by this data plane or an
// earlier one: verdicts are kept under the root) is not read whole again
// when it is mounted again, so storeVerifiedBlob never sees it: an image
// pulled in a second namespace, or removed and pulled again. The data
// plane's blob keeper watches the verdicts and, for each verified mount,
// gives the blob to the namespaces that reference and lack it: copied
// from a namespace whose content store has it, else fetched again from
// the registry, one blob at a time.

// verdictLister is what the blob keeper reads of the layer filesystems.
type verdictLister interface {
	Verifications(ctx context.Context, since uint64) ([]fs.Verification, uint64, error)
}

// keepBlobs starts the blob keeper of a data plane serving layers, whose
// mounts (with their labels) mounts lists; nil if store_layer_blobs is
// off. The returned function stops it and waits for it.
func keepBlobs(ctx context.Context, cfg *config.Config, layers verdictLister, mounts func() []dataplane.Mount, creds remote.CredentialSource) func() {
	if cfg.Containerd.Address == "" || !cfg.Containerd.StoreLayerBlobs {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	k := &blobKeeper{address: cfg.Containerd.Address, cfg: cfg, creds: creds, verified: map[digest.Digest]string{}}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		k.run(ctx, layers, mounts)
	}()
	go func() {
		defer wg.Done()
		k.watchImages(ctx)
	}()
	return func() {
		cancel()
		wg.Wait()
	}
}

// blobKeeper is a data plane's blob keeper. Two goroutines run it: one
// watches verdicts (run), one watches containerd's images (watchImages).
type blobKeeper struct {
	address string
	cfg     *config.Config
	creds   remote.CredentialSource

	mu sync.Mutex
	// verified holds the image reference of each verified layer mounted,
	// by layer digest.
	verified map[digest.Digest]string
}

// run looks at each verified mount once, until ctx ends.
func (k *blobKeeper) run(ctx context.Context, layers verdictLister, mounts func() []dataplane.Mount) {
	seen := map[string]bool{} // mountpoint and layer; bounded by the mounts
	var gen uint64
	retry := minVerdictRetry
	for {
		vs, g, err := layers.Verifications(ctx, gen)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.G(ctx).WithError(err).Warn("blob keeper: cannot list layer verifications")
			if !sleep(ctx, retry) {
				return
			}
			retry = min(2*retry, maxVerdictRetry)
			continue
		}
		retry, gen = minVerdictRetry, g
		current := map[string]bool{}
		verified := map[digest.Digest]string{}
		var fresh []fs.Verification
		ms := mounts()
		for _, v := range vs {
			key := v.Mountpoint + " " + v.Layer.String()
			current[key] = true
			if v.State != fs.VerificationVerified {
				continue
			}
			verified[v.Layer] = imageRef(ms, v.Mountpoint)
			if !seen[key] {
				seen[key] = true
				fresh = append(fresh, v)
			}
		}
		k.mu.Lock()
		k.verified = verified
		k.mu.Unlock()
		for _, v := range fresh {
			k.keep(ctx, v.Layer, verified[v.Layer])
		}
		for key := range seen {
			if !current[key] {
				delete(seen, key)
			}
		}
	}
}

// imageRef is the image reference the mount at mountpoint was made for.
func imageRef(ms []dataplane.Mount, mountpoint string) string {
	for _, m := range ms {
		if m.Mountpoint == mountpoint {
			return m.Labels[fs.LabelImageRef]
		}
	}
	return ""
}

// keep gives blob dgst of image ref to the namespaces that reference and
// lack it. Failures are logged.
func (k *blobKeeper) keep(ctx context.Context, dgst digest.Digest, ref string) {
	ctx, cancel := context.WithTimeout(ctx, storeBlobTimeout)
	defer cancel()
	lg := log.G(ctx).WithFields(log.Fields{"layer": dgst, "image": ref})
	started := time.Now()
	stored, from, err := k.store(ctx, dgst, ref)
	if err != nil {
		lg.WithError(err).WithField("stored_in", stored).
			Warn("failed to give containerd's content store a verified layer blob: ctr export, docker save and docker push of images with the layer lack it")
		return
	}
	if len(stored) > 0 {
		lg.WithFields(log.Fields{"namespaces": stored, "from": from, "duration": time.Since(started)}).Info("verified layer blob stored in containerd's content store")
	}
}

// store is keep; it returns where it stored the blob and where from.
func (k *blobKeeper) store(ctx context.Context, dgst digest.Digest, ref string) (stored []string, from string, err error) {
	c, err := dialContainerd(ctx, k.address)
	if err != nil {
		return nil, "", err
	}
	defer c.Close()
	lacking, has, err := namespacesLacking(ctx, c, dgst)
	if len(lacking) == 0 || err != nil {
		return nil, "", err
	}
	if has != "" {
		hctx := namespaces.WithNamespace(ctx, has)
		ra, err := c.ContentStore().ReaderAt(hctx, ocispec.Descriptor{Digest: dgst})
		if err != nil {
			return nil, "", fmt.Errorf("read the blob in namespace %s: %w", has, err)
		}
		defer ra.Close()
		stored, err = writeBlob(ctx, c, lacking, ocispec.Descriptor{Digest: dgst, Size: ra.Size()}, ra)
		return stored, "namespace " + has, err
	}
	if ref == "" {
		return nil, "", fmt.Errorf("no namespace has the blob, and its image reference is unknown")
	}
	r, err := remote.NewResolver(append(registryOptions(k.cfg, k.creds), remote.WithWarmConnections(0))...)
	if err != nil {
		return nil, "", fmt.Errorf("registry client: %w", err)
	}
	defer r.Close()
	b, _, err := r.Open(ctx, ref, dgst, 0)
	if err != nil {
		return nil, "", err
	}
	desc := ocispec.Descriptor{Digest: dgst, Size: b.Size()}
	// Fetched whole once: the content store checks the digest as it
	// commits, in the first namespace; the others copy from there.
	first := namespaces.WithNamespace(ctx, lacking[0])
	if err := writeInNamespace(first, c, desc, bufio.NewReaderSize(&blobReader{ctx: ctx, b: b}, fetchPiece)); err != nil {
		return nil, "", fmt.Errorf("namespace %s: %w", lacking[0], err)
	}
	stored = []string{lacking[0]}
	if len(lacking) > 1 {
		ra, err := c.ContentStore().ReaderAt(first, desc)
		if err != nil {
			return stored, "registry", err
		}
		defer ra.Close()
		more, err := writeBlob(ctx, c, lacking[1:], desc, ra)
		return append(stored, more...), "registry", err
	}
	return stored, "registry", nil
}

// fetchPiece is the size of the requests that fetch a blob again.
const fetchPiece = 4 << 20

// blobReader reads a registry blob from the start, in order, for one
// content.WriteBlob within ctx (an io.Reader has no context of its own).
type blobReader struct {
	ctx context.Context
	b   *remote.Blob
	off int64
}

func (r *blobReader) Read(p []byte) (int, error) {
	left := r.b.Size() - r.off
	if left <= 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), left)]
	n, err := r.b.ReadAt(r.ctx, p, r.off)
	r.off += int64(n)
	return n, err
}
