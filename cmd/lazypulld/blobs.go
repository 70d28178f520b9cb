package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/config"
	"github.com/lazypull/lazypull/fs"
)

// A lazily mounted layer's blob never reaches containerd's content store,
// which ctr export, docker save and docker push read. Verification reads
// the blob whole into a spool; once the blob is verified, and before the
// spool is deleted, the data plane writes it into the content store of
// every namespace of containerd whose content references it (an image's
// manifest names its layers in containerd.io/gc.ref.content labels, also
// after a lazy pull), which keeps it for as long as an image references it.
// The verdict is published after that: a layer reported verified has its
// blob in containerd.

// LabelStoredBlob marks a layer blob that lazypulld, not a download, put
// in containerd's content store, with the value StoredBlobVerified.
const (
	LabelStoredBlob    = "lazypull/layer-blob"
	StoredBlobVerified = "verified"
)

// storeBlobTimeout bounds the storing of one blob in containerd: it holds
// one of the data plane's verification slots (a local copy of a few
// hundred MB per second, a minute for the largest layers).
const storeBlobTimeout = 10 * time.Minute

// gcContentRef is the prefix of the labels by which containerd's garbage
// collector follows references from content to content.
const gcContentRef = "containerd.io/gc.ref.content."

// storeBlobOptions returns the fs options that store verified blobs in
// containerd at cfg's address, for the life of ctx; none if turned off.
func storeBlobOptions(ctx context.Context, cfg *config.Config) []fs.Option {
	address := cfg.Containerd.Address
	if address == "" || !cfg.Containerd.StoreLayerBlobs {
		return nil
	}
	return []fs.Option{fs.WithVerifiedBlob(func(dgst digest.Digest, path string) {
		storeVerifiedBlob(ctx, address, dgst, path)
	})}
}

// storeVerifiedBlob writes the verified blob dgst, whose complete copy is
// at path, into the content store of every namespace of containerd at
// address that references it and lacks it. Failures are logged: the layer
// works without, only exports of its images fail.
func storeVerifiedBlob(ctx context.Context, address string, dgst digest.Digest, path string) {
	ctx, cancel := context.WithTimeout(ctx, storeBlobTimeout)
	defer cancel()
	lg := log.G(ctx).WithField("layer", dgst)
	started := time.Now()
	stored, err := storeBlob(ctx, address, dgst, path)
	if err != nil {
		lg.WithError(err).WithField("stored_in", stored).
			Warn("failed to give containerd's content store the verified layer blob: ctr export, docker save and docker push of images with the layer lack it")
		return
	}
	if len(stored) > 0 {
		lg.WithFields(log.Fields{"namespaces": stored, "duration": time.Since(started)}).Info("verified layer blob stored in containerd's content store")
	}
}

// storeBlob is storeVerifiedBlob; it returns the namespaces where it
// stored the blob.
func storeBlob(ctx context.Context, address string, dgst digest.Digest, path string) ([]string, error) {
	c, err := dialContainerd(ctx, address)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	lacking, _, err := namespacesLacking(ctx, c, dgst)
	if len(lacking) == 0 {
		return nil, err
	}
	f, oerr := os.Open(path)
	if oerr != nil {
		return nil, errors.Join(err, fmt.Errorf("open the verified copy: %w", oerr))
	}
	defer f.Close()
	st, serr := f.Stat()
	if serr != nil {
		return nil, errors.Join(err, serr)
	}
	// A fetch may still write to the spool, the bytes it verified: the
	// content store checks the digest again as it commits.
	desc := ocispec.Descriptor{Digest: dgst, Size: st.Size()}
	stored, werr := writeBlob(ctx, c, lacking, desc, f)
	return stored, errors.Join(err, werr)
}

// namespacesLacking returns the namespaces of containerd whose content
// references dgst but whose content store lacks it, and one namespace
// whose content store has it, if any.
func namespacesLacking(ctx context.Context, c *client.Client, dgst digest.Digest) (lacking []string, has string, err error) {
	nss, err := c.NamespaceService().List(ctx)
	if err != nil {
		return nil, "", fmt.Errorf("list containerd namespaces: %w", err)
	}
	var errs []error
	cs := c.ContentStore()
	for _, ns := range nss {
		nctx := namespaces.WithNamespace(ctx, ns)
		_, err := cs.Info(nctx, dgst)
		if err == nil {
			has = ns
			continue
		}
		if errdefs.IsNotFound(err) {
			var ok bool
			if ok, err = referenced(nctx, cs, dgst); ok {
				lacking = append(lacking, ns)
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("namespace %s: %w", ns, err))
		}
	}
	return lacking, has, errors.Join(errs...)
}

// writeBlob writes the blob that r holds into the content store of each
// of nss and returns those where it did.
func writeBlob(ctx context.Context, c *client.Client, nss []string, desc ocispec.Descriptor, r io.ReaderAt) ([]string, error) {
	var stored []string
	var errs []error
	for _, ns := range nss {
		err := writeInNamespace(namespaces.WithNamespace(ctx, ns), c, desc, io.NewSectionReader(r, 0, desc.Size))
		if err != nil {
			errs = append(errs, fmt.Errorf("namespace %s: %w", ns, err))
			continue
		}
		stored = append(stored, ns)
	}
	return stored, errors.Join(errs...)
}

// writeInNamespace writes the blob r holds into the content store of ctx's
// namespace, labelled as stored by lazypulld.
func writeInNamespace(ctx context.Context, c *client.Client, desc ocispec.Descriptor, r io.Reader) error {
	// Under a lease until committed: the references keep it after.
	ctx, done, err := c.WithLease(ctx, leases.WithRandomID(), leases.WithExpiration(time.Hour))
	if err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	defer func() {
		if err := done(context.WithoutCancel(ctx)); err != nil {
			log.G(ctx).WithError(err).Warn("failed to delete the lease of a stored layer blob")
		}
	}()
	err = content.WriteBlob(ctx, c.ContentStore(), "lazypull-"+desc.Digest.String(), r, desc,
		content.WithLabels(map[string]string{LabelStoredBlob: StoredBlobVerified}))
	if err != nil {
		return fmt.Errorf("write blob %s: %w", desc.Digest, err)
	}
	return nil
}

// errFound stops a Walk.
var errFound = errors.New("found")

// referenced reports whether content in cs names dgst in a label that
// containerd's garbage collector follows.
func referenced(ctx context.Context, cs content.Store, dgst digest.Digest) (bool, error) {
	err := cs.Walk(ctx, func(info content.Info) error {
		for k, v := range info.Labels {
			if v == dgst.String() && strings.HasPrefix(k, gcContentRef) {
				return errFound
			}
		}
		return nil
	})
	if errors.Is(err, errFound) {
		return true, nil
	}
	return false, err
}
