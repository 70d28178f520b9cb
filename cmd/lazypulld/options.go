package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/snapshots"
	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/cache"
	"github.com/lazypull/lazypull/config"
	"github.com/lazypull/lazypull/fs"
	"github.com/lazypull/lazypull/remote"
	"github.com/lazypull/lazypull/snapshotter"
)

// newSnapshotter is the one place where the configuration becomes options
// of the packages the daemon is built from: the registry client feeds the
// layer filesystems, which the snapshotter mounts lazy layers with. The
// returned close function closes the snapshotter (which unmounts its
// layers), then the filesystems, then the chunk cache.
func newSnapshotter(cfg *config.Config) (snapshots.Snapshotter, func() error, error) {
	if cfg.FS.Disable {
		sn, err := snapshotter.New(cfg.Root)
		if err != nil {
			return nil, nil, err
		}
		return sn, sn.Close, nil
	}
	resolver, err := remote.NewResolver(
		remote.WithHostsDir(cfg.Remote.HostsDir),
		remote.WithRequestTimeout(cfg.Remote.RequestTimeout.Duration),
		remote.WithRetries(cfg.Remote.Retries),
		remote.WithParallelism(cfg.Remote.Parallelism),
		remote.WithWarmConnections(cfg.Remote.WarmConnections),
		remote.WithUserAgent("lazypull/"+version),
	)
	if err != nil {
		return nil, nil, fmt.Errorf("registry client: %w", err)
	}
	chunks, err := newCache(cfg)
	if err != nil {
		return nil, nil, err
	}
	layers, err := fs.New(filepath.Join(cfg.Root, "fs"), blobOpener{resolver},
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
		fs.WithLimits(fs.Limits{
			TOCCompressedSize: cfg.FS.MaxTOCCompressedSize.Int64(),
			TOCSize:           cfg.FS.MaxTOCSize.Int64(),
			Entries:           cfg.FS.MaxTOCEntries,
			NameLength:        cfg.FS.MaxNameLength,
			PathDepth:         cfg.FS.MaxPathDepth,
			ChunkSize:         cfg.FS.MaxChunkSize.Int64(),
		}),
	)
	if err != nil {
		return nil, nil, errors.Join(fmt.Errorf("layer filesystem: %w", err), chunks.Close())
	}
	sn, err := snapshotter.New(cfg.Root, snapshotter.WithFileSystem(layers))
	if err != nil {
		return nil, nil, errors.Join(err, layers.Close(), chunks.Close())
	}
	return sn, func() error { return errors.Join(sn.Close(), layers.Close(), chunks.Close()) }, nil
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
