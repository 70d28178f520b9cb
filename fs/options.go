package fs

import (
	"fmt"
	"time"

	"github.com/containerd/errdefs"
)

// Option configures a FileSystem.
type Option func(*config) error

type config struct {
	allowUnverified    bool
	tailSize           int64
	cache              Cache
	entryTimeout       time.Duration
	attrTimeout        time.Duration
	resolveConcurrency int
	memCacheSize       int64
}

// Defaults of the options.
const (
	// DefaultTailSize is enough for the footer and the TOC of a typical layer,
	// so mounting it costs one request.
	DefaultTailSize = 1 << 20
	// DefaultTimeout is the entry and attribute timeout. Layers never change,
	// so the kernel may cache names and attributes for long.
	DefaultTimeout = time.Hour
	// DefaultResolveConcurrency bounds the layers resolved in the background
	// at once; it covers the layers of most images, so they resolve in parallel.
	DefaultResolveConcurrency = 16
	// DefaultMemoryCacheSize bounds the recently read chunks kept in memory,
	// which spare a chunk that the kernel reads in several requests from being
	// fetched or loaded from the Cache again for each request.
	DefaultMemoryCacheSize = 64 << 20
)

func defaultConfig() config {
	return config{
		tailSize:           DefaultTailSize,
		entryTimeout:       DefaultTimeout,
		attrTimeout:        DefaultTimeout,
		resolveConcurrency: DefaultResolveConcurrency,
		memCacheSize:       DefaultMemoryCacheSize,
	}
}

// WithAllowUnverified mounts layers whose labels carry no TOC digest when
// allow is true. Such a layer's chunks are still checked against the digests
// in its (unverified) TOC. When false (the default), Mount refuses them.
func WithAllowUnverified(allow bool) Option {
	return func(c *config) error {
		c.allowUnverified = allow
		return nil
	}
}

// WithTailSize sets how many bytes Mount reads from the end of a blob in its
// first request (default DefaultTailSize). A TOC that starts before the tail
// costs one more request.
func WithTailSize(n int64) Option {
	return func(c *config) error {
		if n < 64 {
			return fmt.Errorf("tail size %d too small for an eStargz footer: %w", n, errdefs.ErrInvalidArgument)
		}
		c.tailSize = n
		return nil
	}
}

// WithCache stores verified chunks in cache and serves reads from it. Without
// it, chunks are only kept in a small memory cache.
func WithCache(cache Cache) Option {
	return func(c *config) error {
		c.cache = cache
		return nil
	}
}

// WithEntryTimeout sets how long the kernel may cache names and failed
// lookups (default DefaultTimeout).
func WithEntryTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return fmt.Errorf("entry timeout %v: %w", d, errdefs.ErrInvalidArgument)
		}
		c.entryTimeout = d
		return nil
	}
}

// WithAttrTimeout sets how long the kernel may cache attributes (default
// DefaultTimeout).
func WithAttrTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return fmt.Errorf("attr timeout %v: %w", d, errdefs.ErrInvalidArgument)
		}
		c.attrTimeout = d
		return nil
	}
}

// WithResolveConcurrency bounds how many layers of an image are resolved in
// the background at once (default DefaultResolveConcurrency).
func WithResolveConcurrency(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return fmt.Errorf("resolve concurrency %d: %w", n, errdefs.ErrInvalidArgument)
		}
		c.resolveConcurrency = n
		return nil
	}
}

// WithMemoryCacheSize bounds, in bytes, the recently read chunks kept in
// memory (default DefaultMemoryCacheSize); 0 disables it.
func WithMemoryCacheSize(n int64) Option {
	return func(c *config) error {
		if n < 0 {
			return fmt.Errorf("memory cache size %d: %w", n, errdefs.ErrInvalidArgument)
		}
		c.memCacheSize = n
		return nil
	}
}
