package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/cache"
	"github.com/lazypull/lazypull/config"
	"github.com/lazypull/lazypull/fs"
	"github.com/lazypull/lazypull/remote"
)

// newRegistryClient is the registry client of a data plane: creds, if not
// nil, gives it credentials ahead of docker's config.json (those the
// daemon's CRI image service pushes); m, if not nil, counts its requests.
func newRegistryClient(cfg *config.Config, creds remote.CredentialSource, m *planeMetrics) (*remote.Resolver, error) {
	ropts := registryOptions(cfg, creds)
	if m != nil {
		ropts = append(ropts, remote.WithObserver(m))
	}
	resolver, err := remote.NewResolver(ropts...)
	if err != nil {
		return nil, fmt.Errorf("registry client: %w", err)
	}
	return resolver, nil
}

// newFileSystem is the one place where the configuration becomes options
// of the packages a data plane is built from: the registry client
// (newRegistryClient) feeds the layer filesystems, which read through the
// chunk cache. The returned close function closes the filesystems (which
// unmounts their layers), then the chunk cache, then the registry client
// (its downloads into spool files), which newFileSystem owns from now on,
// and closes if it fails. m, if not nil, reads the filesystems' and the
// cache's counters; more options follow those of cfg.
func newFileSystem(cfg *config.Config, resolver *remote.Resolver, m *planeMetrics, more ...fs.Option) (*fs.FileSystem, func() error, error) {
	chunks, err := newCache(cfg)
	if err != nil {
		return nil, nil, errors.Join(err, resolver.Close())
	}
	opts := append([]fs.Option{
		fs.WithCache(chunks),
		fs.WithAllowUnverified(cfg.FS.AllowUnverifiedLayers),
		fs.WithTailSize(cfg.FS.TailSize.Int64()),
		fs.WithMemoryCacheSize(cfg.FS.MemoryCacheSize.Int64()),
		fs.WithResolveConcurrency(cfg.FS.ResolveConcurrency),
		fs.WithReadahead(cfg.FS.ReadaheadSize.Int64()),
		fs.WithDirPrefetch(cfg.FS.DirPrefetchSize.Int64()),
		fs.WithLoaderPrefetch(cfg.FS.LoaderPrefetch),
		fs.WithFetchConcurrency(cfg.FS.FetchConcurrency),
		fs.WithPrefetchWait(cfg.FS.PrefetchWait.Duration),
		fs.WithBackgroundFetch(cfg.FS.BackgroundFetch),
		fs.WithBackgroundFetchDelay(cfg.FS.BackgroundFetchDelay.Duration),
		fs.WithBackgroundFetchConcurrency(cfg.FS.BackgroundFetchConcurrency),
		fs.WithPassthrough(cfg.FS.Passthrough),
		fs.WithVerify(verifyMode(&cfg.FS)),
		fs.WithVerifyConcurrency(cfg.FS.VerifyConcurrency),
		fs.WithSpoolSize(cfg.FS.VerifySpoolSize.Int64()),
		fs.WithLimits(fs.Limits{
			TOCCompressedSize: cfg.FS.MaxTOCCompressedSize.Int64(),
			TOCSize:           cfg.FS.MaxTOCSize.Int64(),
			Entries:           cfg.FS.MaxTOCEntries,
			NameLength:        cfg.FS.MaxNameLength,
			PathDepth:         cfg.FS.MaxPathDepth,
			ChunkSize:         cfg.FS.MaxChunkSize.Int64(),
		}),
	}, more...)
	layers, err := fs.New(filepath.Join(cfg.Root, "fs"), blobOpener{resolver}, opts...)
	if err != nil {
		return nil, nil, errors.Join(fmt.Errorf("layer filesystem: %w", err), chunks.Close(), resolver.Close())
	}
	if m != nil {
		m.watch(layers, chunks)
	}
	return layers, func() error { return errors.Join(layers.Close(), chunks.Close(), resolver.Close()) }, nil
}

// registryOptions are the options of a data plane's registry client: with
// creds, if not nil, ahead of docker's config.json.
func registryOptions(cfg *config.Config, creds remote.CredentialSource) []remote.Option {
	ropts := []remote.Option{
		remote.WithHostsDir(cfg.Remote.HostsDir),
		remote.WithRequestTimeout(cfg.Remote.RequestTimeout.Duration),
		remote.WithStallTimeout(cfg.Remote.StallTimeout.Duration),
		remote.WithRetries(cfg.Remote.Retries),
		remote.WithWarmConnections(cfg.Remote.WarmConnections),
		remote.WithSpool(filepath.Join(cfg.Root, "spool"), cfg.Remote.SpoolMaxSize.Int64()),
		remote.WithUserAgent("lazypull/" + version),
	}
	if creds != nil {
		ropts = append(ropts, remote.WithCredentialSource(creds))
	}
	return ropts
}

// verifyMode is [fs] verify as fs has it.
func verifyMode(c *config.FS) fs.VerifyMode {
	switch c.Verify {
	case "background":
		return fs.VerifyBackground
	case "before-commit":
		return fs.VerifyBeforeMount
	case "auto":
		if c.BackgroundFetch {
			return fs.VerifyBackground
		}
	}
	return fs.VerifyOff
}

// The chunk cache is a FileCache, which FUSE passthrough needs: fs finds
// that out at run time, so it is checked here.
var _ fs.FileCache = (*cache.Dir)(nil)

// newCache opens the node-wide chunk cache that [cache] describes.
func newCache(cfg *config.Config) (*cache.Dir, error) {
	dir := cfg.Cache.Dir
	if dir == "" {
		dir = filepath.Join(cfg.Root, "cache")
	}
	c, err := cache.NewDir(dir, cache.WithMaxSize(cfg.Cache.MaxSize.Int64()))
	if err != nil {
		return nil, fmt.Errorf("chunk cache: %w", err)
	}
	return c, nil
}

// blobOpener adapts the registry client to the blob source fs declares.
type blobOpener struct{ r *remote.Resolver }

var (
	_ fs.ManifestReader = blobOpener{}
	_ fs.SizedOpener    = blobOpener{}
	_ fs.ProgressBlob   = (*remote.Blob)(nil)
)

// Manifest reads an image's manifest, for the entrypoint prefetch.
func (o blobOpener) Manifest(ctx context.Context, ref string, dgst digest.Digest) ([]byte, error) {
	return o.r.Manifest(ctx, ref, dgst)
}

func (o blobOpener) Open(ctx context.Context, ref string, dgst digest.Digest, tail int64) (fs.Blob, []byte, error) {
	b, t, err := o.r.Open(ctx, ref, dgst, tail)
	if err != nil {
		return nil, nil, err
	}
	return b, t, nil
}

// OpenSized opens a blob whose TOC fs stored, without a request.
func (o blobOpener) OpenSized(ctx context.Context, ref string, dgst digest.Digest, size int64) (fs.Blob, error) {
	b, err := o.r.OpenSized(ctx, ref, dgst, size)
	if err != nil {
		return nil, err
	}
	return b, nil
}
