package fs

import (
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
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

	readahead             int64
	dirPrefetch           int64
	loaderPrefetch        bool
	fetchConcurrency      int
	prefetchWait          time.Duration
	background            bool
	backgroundDelay       time.Duration
	backgroundConcurrency int
	passthrough           bool

	verify            VerifyMode
	verifyConcurrency int
	spoolSize         int64
	verifyRetry       time.Duration
	verifiedBlob      func(dgst digest.Digest, path string)
	limits            Limits

	policies []Policy
	clock    clock
}

// Defaults of the options.
const (
	// DefaultTailSize is enough for the footer and the TOC of a typical layer,
	// so mounting it costs one request: the TOC of a Debian base layer of
	// 6000-7000 files is 330-380 KiB. Every byte beyond the TOC is wasted,
	// for every layer of every image.
	DefaultTailSize = 512 << 10
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
	// DefaultReadahead is the compressed size of the window fetched after
	// the chunks of a read that misses: about one bandwidth-delay product of
	// a 40 ms, 200 Mbit/s link, so that the window costs the read little
	// and holds the files next to the one read.
	DefaultReadahead = 2 << 20
	// DefaultFetchConcurrency bounds the concurrent requests one large
	// read, read-ahead window or prefetch is split into.
	DefaultFetchConcurrency = 4
	// DefaultBackgroundDelay is how long after Mount background fetch starts.
	DefaultBackgroundDelay = 500 * time.Millisecond
	// DefaultBackgroundConcurrency bounds the requests of one layer's
	// background fetch: a few, to fill a long-latency link.
	DefaultBackgroundConcurrency = 4
	// DefaultVerifyConcurrency bounds the layers verified at once: each
	// takes a core to inflate and hash its blob.
	DefaultVerifyConcurrency = 2
	// DefaultSpoolSize bounds the disk space of spools, all layers
	// together.
	DefaultSpoolSize = 8 << 30
)

func defaultConfig() config {
	return config{
		tailSize:           DefaultTailSize,
		entryTimeout:       DefaultTimeout,
		attrTimeout:        DefaultTimeout,
		resolveConcurrency: DefaultResolveConcurrency,
		memCacheSize:       DefaultMemoryCacheSize,

		readahead:             DefaultReadahead,
		dirPrefetch:           DefaultDirPrefetch,
		fetchConcurrency:      DefaultFetchConcurrency,
		background:            true,
		backgroundDelay:       DefaultBackgroundDelay,
		backgroundConcurrency: DefaultBackgroundConcurrency,
		passthrough:           true,
		loaderPrefetch:        true,

		verifyConcurrency: DefaultVerifyConcurrency,
		spoolSize:         DefaultSpoolSize,
		verifyRetry:       minVerifyRetry,
		limits:            DefaultLimits(),
		clock:             realClock{},
	}
}

// WithPolicy adds p to the FileSystem's policies, after its own: p is told
// of every mount and sees the events of the layers it attaches to (see
// Policy).
func WithPolicy(p Policy) Option {
	return func(c *config) error {
		if p == nil {
			return fmt.Errorf("nil policy: %w", errdefs.ErrInvalidArgument)
		}
		c.policies = append(c.policies, p)
		return nil
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

// WithReadahead sets the compressed size of the window of following chunks,
// in blob order, that a read that misses fetches along with its own
// (default DefaultReadahead); 0 turns read-ahead off. For a reader that
// keeps reading on in blob order the window doubles, up to 8 times n. A
// reader that jumps around inside a file of up to 16 MiB compressed gets
// the rest of the file at its second jump, and a file of several chunks up
// to 8 MiB compressed comes whole with its first read from the start; 0
// turns these off too.
func WithReadahead(n int64) Option {
	return func(c *config) error {
		if n < 0 {
			return fmt.Errorf("readahead size %d: %w", n, errdefs.ErrInvalidArgument)
		}
		c.readahead = n
		return nil
	}
}

// DefaultDirPrefetch is the default of WithDirPrefetch: a directory of
// small files, such as a locale's or a package of an interpreter's modules
// (Python's encodings: 121 compiled modules, 285 KB), comes along; a large
// one, such as a language's whole library, does not, for its files would
// take the link from the reads a starting program waits for.
const DefaultDirPrefetch = 512 << 10

// WithDirPrefetch sets how large (in compressed bytes) a directory's files
// may be, all together, for the first read that fetches in the directory to
// fetch them all along (default DefaultDirPrefetch; 0 turns it off). A
// starting program tends to read several files of one small directory (its
// modules, its configuration) one after another, each a round trip of its
// own; fetched together, they cost one.
func WithDirPrefetch(n int64) Option {
	return func(c *config) error {
		if n < 0 {
			return fmt.Errorf("directory prefetch size %d: %w", n, errdefs.ErrInvalidArgument)
		}
		c.dirPrefetch = n
		return nil
	}
}

// WithLoaderPrefetch turns the loader prefetch on (the default) or off:
// with it, a read that fetches the start of an ELF file fetches, at once,
// what the dynamic loader will open for it (interpreter, /etc/ld.so.cache,
// libraries, and theirs) in the image the file belongs to, as the
// image-layers labels tell. With an Opener that is a ManifestReader, the
// image's entrypoint is loaded so once its layers are mounted.
func WithLoaderPrefetch(on bool) Option {
	return func(c *config) error {
		c.loaderPrefetch = on
		return nil
	}
}

// WithFetchConcurrency bounds the concurrent requests that one large read,
// read-ahead window or prefetch is split into (default
// DefaultFetchConcurrency); 1 fetches each as one request.
func WithFetchConcurrency(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return fmt.Errorf("fetch concurrency %d: %w", n, errdefs.ErrInvalidArgument)
		}
		c.fetchConcurrency = n
		return nil
	}
}

// WithPrefetchWait sets how long Mount waits for the prefetch of a layer
// with a prefetch landmark: the files the image's builder marked as read at
// start-up, which are fetched from the moment the layer is mounted. 0 (the
// default) returns at once; a read of a file being prefetched waits for its
// part of the prefetch only.
func WithPrefetchWait(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return fmt.Errorf("prefetch wait %v: %w", d, errdefs.ErrInvalidArgument)
		}
		c.prefetchWait = d
		return nil
	}
}

// WithBackgroundFetch turns the background fetch of whole layers on (the
// default) or off. A mounted layer's chunks that are not in the Cache are
// then fetched in blob order, starting after the background fetch delay,
// whenever no reader has been waiting for a fetch for a moment, until the
// layer is fully local or unmounted. It needs a Cache.
func WithBackgroundFetch(on bool) Option {
	return func(c *config) error {
		c.background = on
		return nil
	}
}

// WithBackgroundFetchDelay sets how long after Mount the background fetch
// starts (default DefaultBackgroundDelay).
func WithBackgroundFetchDelay(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return fmt.Errorf("background fetch delay %v: %w", d, errdefs.ErrInvalidArgument)
		}
		c.backgroundDelay = d
		return nil
	}
}

// WithBackgroundFetchConcurrency bounds the concurrent requests of the
// background fetch, all layers together (default
// DefaultBackgroundConcurrency): the node's link is what they share.
func WithBackgroundFetchConcurrency(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return fmt.Errorf("background fetch concurrency %d: %w", n, errdefs.ErrInvalidArgument)
		}
		c.backgroundConcurrency = n
		return nil
	}
}

// WithPassthrough turns FUSE passthrough on (the default) or off. With it,
// the kernel reads a file straight from a FileCache entry holding all of
// it, verified before it is used, without a round trip through the
// FileSystem: a file whose content is one chunk from the chunk's entry,
// verified at open; a file of several chunks, up to 256 MiB, from a
// whole-file entry that is assembled from its chunks, in the background,
// once they are all cached and the file has been opened, and verified in
// the background too, so that the opens until then read through the
// FileSystem. Where the kernel does not support passthrough, reads go
// through the FileSystem as without it.
func WithPassthrough(on bool) Option {
	return func(c *config) error {
		c.passthrough = on
		return nil
	}
}

// WithVerify sets when a mounted layer is checked against the DiffID its
// chain ID labels imply (default VerifyOff). Verification reads the blob
// whole, in order: it must hash to the layer digest, inflate to a tar
// whose digest gives the chain ID, and that tar must hold, entry by entry
// and chunk by chunk, what the layer's TOC serves. A layer that fails
// verification fails its reads from then on. With VerifyBackground, a
// layer is verified once its background fetch has made it local (without
// background fetch, by fetching what it lacks the same way); the bytes
// every fetch brings are kept for it in a spool under the FileSystem's
// root until then. With VerifyBeforeMount, Mount fetches the blob whole at
// full speed and verifies it before it returns. Outcomes are kept under
// the root, so that a blob is verified once; Verifications reports them.
func WithVerify(mode VerifyMode) Option {
	return func(c *config) error {
		if mode < VerifyOff || mode > VerifyBeforeMount {
			return fmt.Errorf("verify mode %d: %w", mode, errdefs.ErrInvalidArgument)
		}
		c.verify = mode
		return nil
	}
}

// WithVerifyConcurrency bounds how many layers are verified at once
// (default DefaultVerifyConcurrency).
func WithVerifyConcurrency(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return fmt.Errorf("verify concurrency %d: %w", n, errdefs.ErrInvalidArgument)
		}
		c.verifyConcurrency = n
		return nil
	}
}

// WithSpoolSize bounds, in bytes, the disk space that the spools of layers
// waiting for verification take, all together (default DefaultSpoolSize).
// A layer whose blob does not fit is not spooled: its verification fetches
// it whole again. 0 spools nothing.
func WithSpoolSize(n int64) Option {
	return func(c *config) error {
		if n < 0 {
			return fmt.Errorf("spool size %d: %w", n, errdefs.ErrInvalidArgument)
		}
		c.spoolSize = n
		return nil
	}
}

// WithVerifiedBlob has fn called with the path of a blob's complete copy,
// once verified against its digest and DiffID, before the copy is deleted:
// fn may link it elsewhere (a content store). Only spooled blobs have one.
func WithVerifiedBlob(fn func(dgst digest.Digest, path string)) Option {
	return func(c *config) error {
		c.verifiedBlob = fn
		return nil
	}
}
