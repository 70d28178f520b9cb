// Package config owns lazypulld's configuration file: the TOML schema, its
// defaults and its validation.
//
// The file is read strictly: an unknown key, a value of the wrong type or a
// value out of range is an error that names the key (and, for the first two,
// the line), so that a typo cannot silently leave a default in force. The
// package only describes settings; turning them into options of the packages
// that use them is the job of cmd/lazypulld.
//
// Every key documented here is in example.toml, with its default value.
package config

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"time"
)

// Default locations, also used by the command line flags.
const (
	// DefaultPath is where lazypulld looks for its configuration file.
	DefaultPath = "/etc/lazypull/config.toml"
	// DefaultRoot is the default state directory.
	DefaultRoot = "/var/lib/lazypull"
	// DefaultAddress is the default socket path.
	DefaultAddress = "/run/lazypull/lazypull.sock"
	// DefaultLogLevel is the default log level.
	DefaultLogLevel = "info"
	// DefaultHostsDir is containerd's default directory of hosts.toml files.
	DefaultHostsDir = "/etc/containerd/certs.d"
)

// LogLevels are the values accepted by Config.LogLevel, most verbose first.
var LogLevels = []string{"trace", "debug", "info", "warn", "error"}

// Config is the content of lazypulld's configuration file. The zero value is
// not valid; start from Default or Load.
type Config struct {
	// Root is the directory that holds lazypulld's state: the snapshot
	// metadata database, the snapshot directories, the lock file that
	// keeps a second daemon off the same state, the data planes' sockets
	// and logs (dataplanes/) and the stored tables of contents of mounted
	// layers (fs/toc/). It must be an absolute path; it is created (mode
	// 0700) when missing.
	Root string `toml:"root"`

	// Address is the path of the unix socket on which lazypulld serves
	// containerd's snapshots API (the address of the proxy_plugins entry in
	// containerd's configuration). It must be an absolute path; its parent
	// directory is created when missing.
	Address string `toml:"address"`

	// LogLevel is the least severe level that is logged: one of trace,
	// debug, info, warn or error.
	LogLevel string `toml:"log_level"`

	// Remote configures how layer contents are read from registries.
	Remote Remote `toml:"remote"`

	// FS configures the filesystems that serve lazily pulled layers.
	FS FS `toml:"fs"`

	// Cache configures the node-wide cache of file contents fetched from
	// registries.
	Cache Cache `toml:"cache"`

	// Containerd says how lazypulld reaches the containerd it serves, to
	// remove from containerd's records the snapshots of layers that failed
	// verification.
	Containerd Containerd `toml:"containerd"`
	// CRI configures the Kubernetes image service that passes the
	// credentials of pod pull secrets to lazypulld.
	CRI CRI `toml:"cri"`
	// Profile configures start-up profiles: what containers of an image
	// read first, recorded, kept on the node and shared through the
	// image's registry.
	Profile Profile `toml:"profile"`

	// Snapshotter configures what a pull does with a layer that cannot be
	// mounted lazily.
	Snapshotter Snapshotter `toml:"snapshotter"`

	// Metrics configures the Prometheus metrics endpoint.
	Metrics Metrics `toml:"metrics"`

	// Removed lists the keys of the file that lazypulld no longer reads
	// (set by Load, not a key of the file): they are ignored, and the
	// daemon warns of each.
	Removed []RemovedKey `toml:"-"`
}

// Remote is the [remote] table: the registry client.
type Remote struct {
	// HostsDir is a directory of containerd hosts.toml files (containerd's
	// config_path): per registry host, the mirrors to try first, TLS
	// settings and whether plain HTTP is allowed. Point it at the same
	// directory containerd uses so both pull from the same places. A
	// missing directory means HTTPS to the registry itself.
	HostsDir string `toml:"hosts_dir"`

	// RequestTimeout bounds the wait for the status and headers of each
	// HTTP answer of a registry; a retried request gets a fresh timeout.
	// The body is bounded by StallTimeout instead.
	RequestTimeout Duration `toml:"request_timeout"`

	// StallTimeout is how long an answer's body may bring no byte before
	// it is given up as stalled; the read then asks again for the bytes it
	// is still missing (up to Retries times). Only the waits for bytes
	// count, not the whole transfer: a large body on a slow link is never
	// cut off while it keeps coming.
	StallTimeout Duration `toml:"stall_timeout"`

	// Retries is how often a request that failed for a temporary reason
	// (network error, HTTP 429 or 5xx) is retried, with exponential
	// backoff, and how often a read whose answer broke off (stalled, cut
	// off, short) asks again for the rest.
	Retries int `toml:"retries"`

	// WarmConnections is how many connections to a registry host are
	// opened ahead of need when a layer is first read from it, so that the
	// burst of reads of a starting container waits for no TCP or TLS
	// handshake. 0 turns it off.
	WarmConnections int `toml:"warm_connections"`

	// SpoolMaxSize bounds the whole blobs kept from registry hosts (or
	// proxies) that ignore range requests and answer every read with the
	// whole blob: such a blob is fetched whole once, into a file under
	// <root>/spool, and every read of it is served from there. Beyond the
	// bound the least recently read go first; one unread for 10 minutes is
	// dropped. A blob larger than the bound is read out of whole answers,
	// one per read. 0 turns spooling off.
	SpoolMaxSize Size `toml:"spool_max_size"`
}

// FS is the [fs] table: the FUSE filesystems of lazily pulled layers.
type FS struct {
	// Disable turns lazy pulling off: every layer is then pulled and
	// unpacked by containerd, as with the overlayfs snapshotter.
	Disable bool `toml:"disable"`

	// AllowUnverifiedLayers lets eStargz layers whose manifest carries no
	// TOC digest annotation be mounted lazily. Their chunks are still
	// checked against the digests in their own table of contents, but
	// nothing ties that table to the image. Off by default: such layers
	// are pulled normally.
	AllowUnverifiedLayers bool `toml:"allow_unverified_layers"`

	// TailSize is how many bytes are read from the end of a layer when it
	// is mounted: the footer and, for most layers, the whole table of
	// contents arrive in that one request (that of a layer of 7000 files
	// takes about 380KiB). A larger table of contents costs one more
	// request; a larger tail, its bytes for every layer.
	TailSize Size `toml:"tail_size"`

	// MemoryCacheSize bounds the decompressed chunks kept in memory for
	// reads that come back to the same chunk. 0 turns it off.
	MemoryCacheSize Size `toml:"memory_cache_size"`

	// ResolveConcurrency bounds how many layers of an image are resolved
	// (opened and their table of contents fetched) at the same time when
	// the first layer of the image is mounted.
	ResolveConcurrency int `toml:"resolve_concurrency"`

	// ReadaheadSize is the read-ahead for readers that read in layer order
	// (a large file from start to end, or a directory's files in the order
	// the layer holds them): compressed bytes after a read that has to
	// fetch, fetched along with it. While the reader keeps reading on, the
	// window doubles, up to 8 times this. A reader that jumps from file to
	// file gets no read-ahead; one that jumps around inside a file of up to
	// 16MiB compressed gets the rest of it on its second jump, and a file
	// of several chunks up to 8MiB compressed comes whole with its first
	// read from the start. 0 turns read-ahead off. At most 256MiB.
	ReadaheadSize Size `toml:"readahead_size"`

	// DirPrefetchSize lets the first read that fetches in a directory fetch
	// the directory's other files along, when they come to at most this
	// many compressed bytes together: a starting program tends to read
	// several files of one small directory (its modules, its
	// configuration), each a round trip of its own. 0 turns it off. At most
	// 256MiB.
	DirPrefetchSize Size `toml:"dir_prefetch_size"`

	// LoaderPrefetch lets a read that fetches the start of a program or
	// library (an ELF file) fetch, at once, what the dynamic loader will
	// open for it: its interpreter, /etc/ld.so.cache, the libraries it
	// needs and theirs, found in the image the file belongs to. Without
	// it, the loader opens them one after another, each a round trip.
	// Once an image's layers are mounted, its entrypoint (the program
	// its configuration runs, found in its PATH) is loaded the same way,
	// ahead of the container.
	LoaderPrefetch bool `toml:"loader_prefetch"`

	// FetchConcurrency bounds the concurrent range requests that one large
	// read, read-ahead window or prefetch is split into, which keeps a
	// long-latency link busy.
	FetchConcurrency int `toml:"fetch_concurrency"`

	// PrefetchWait is how long mounting a layer waits for its prefetch: the
	// files that the image's builder put before the .prefetch.landmark
	// entry, which are fetched from the moment the layer is mounted. "0s"
	// does not wait; a read of such a file waits for its part only.
	PrefetchWait Duration `toml:"prefetch_wait"`

	// BackgroundFetch fetches the rest of every mounted layer into the
	// chunk cache in the background, until the layer is fully local. It
	// yields to reads: a background request starts after 100ms without a
	// read fetching, or when reads have kept the link busy for 2s.
	BackgroundFetch bool `toml:"background_fetch"`

	// BackgroundFetchDelay is how long after a layer is mounted its
	// background fetch starts.
	BackgroundFetchDelay Duration `toml:"background_fetch_delay"`

	// BackgroundFetchConcurrency bounds the concurrent range requests of
	// the background fetch, all layers together: they share the node's
	// link.
	BackgroundFetchConcurrency int `toml:"background_fetch_concurrency"`

	// Passthrough lets the kernel read a cached file straight from the
	// chunk cache (FUSE passthrough, Linux 6.9 and later), verified before
	// use: a file of one chunk from the chunk, a file of several (up to
	// 256 MiB) from a copy of the whole file that lazypulld assembles in
	// the cache once all its chunks are there and it has been opened.
	// Without kernel support, files are read through lazypulld as when it
	// is off.
	Passthrough bool `toml:"passthrough"`

	// Verify says when a lazily mounted layer is checked against the DiffID
	// of the image configuration that named it, which containerd checks
	// only for layers it applies itself: "background" once the layer is
	// local (after its background fetch; without one, by fetching the
	// layer the same way), "before-commit" before the pull is told the
	// layer exists (the layer is fetched whole, at full speed, while the
	// pull waits), "off", or "auto": "background" with background_fetch,
	// else "off". A layer that fails is read as I/O errors, and the pull
	// of its chain ID falls back to a normal pull.
	Verify string `toml:"verify"`

	// VerifyConcurrency bounds the layers verified at once by a data plane;
	// each takes a core to inflate and hash its layer.
	VerifyConcurrency int `toml:"verify_concurrency"`

	// VerifySpoolSize bounds the disk space under root that the compressed
	// bytes of layers waiting for verification take, all layers of a data
	// plane together. A layer that does not fit is fetched again, whole, to
	// be verified.
	VerifySpoolSize Size `toml:"verify_spool_size"`
	// MaxTOCCompressedSize bounds a layer's compressed table of contents,
	// which is fetched whole when the layer is mounted. A layer beyond
	// this limit or any of the next five is not mounted lazily: it is
	// pulled the normal way, and its snapshot's fallback label says which
	// limit it exceeds. At least 64KiB.
	MaxTOCCompressedSize Size `toml:"max_toc_compressed_size"`

	// MaxTOCSize bounds a layer's table of contents inflated (JSON), which
	// is held in memory while it is parsed. A table of contents takes about
	// 33MB per 100,000 files. At least 64KiB.
	MaxTOCSize Size `toml:"max_toc_size"`

	// MaxTOCEntries bounds the entries of a layer's table of contents,
	// with the directories their paths imply, and, separately, their
	// xattrs all together: each entry is held in memory while the layer is
	// mounted. A Debian base layer has about 7,000 entries. At least 1024.
	MaxTOCEntries int `toml:"max_toc_entries"`

	// MaxNameLength bounds the path of an entry of a layer, in bytes:
	// from 255 to 4096 (PATH_MAX).
	MaxNameLength int `toml:"max_name_length"`

	// MaxPathDepth bounds how many directories deep an entry of a layer
	// may lie: from 16 to 2048.
	MaxPathDepth int `toml:"max_path_depth"`

	// MaxChunkSize bounds a chunk of a file of a layer, inflated, and the
	// compressed bytes it is stored in: a read of the chunk fetches and
	// holds it whole. eStargz layers are made of chunks of 4MiB by
	// default. At least 64KiB.
	MaxChunkSize Size `toml:"max_chunk_size"`
}

// VerifyModes are the values of fs.verify.
var VerifyModes = []string{"auto", "background", "before-commit", "off"}

// Cache is the [cache] table: the on-disk chunk cache shared by every
// lazily pulled layer of the node.
type Cache struct {
	// Dir is the directory of the cache. Empty means <root>/cache. It must
	// be an absolute path; it is created (mode 0700) when missing. The
	// data planes of the daemon share it (two of them during an upgrade,
	// when max_size holds for each, not for both together). The cache
	// survives restarts: what it holds is not fetched again.
	Dir string `toml:"dir"`

	// MaxSize bounds the bytes the cache keeps: beyond it, the least
	// recently used contents are removed. 0 means no bound other than the
	// disk; when the disk fills up, the cache shrinks and pauses writing
	// rather than failing reads.
	MaxSize Size `toml:"max_size"`
}

// Containerd is the [containerd] table: the containerd lazypulld serves.
type Containerd struct {
	// Address is the path of containerd's gRPC socket. Empty turns off the
	// removal of failed layers from containerd's records, and the storing
	// of layer blobs.
	Address string `toml:"address"`

	// Snapshotter is the name lazypulld has in containerd's configuration
	// (the NAME of its [proxy_plugins.NAME] table).
	Snapshotter string `toml:"snapshotter"`

	// StoreLayerBlobs gives containerd's content store the blob of each
	// lazily mounted layer once it is verified, in every namespace whose
	// images reference it, so that exporting, saving and pushing the image
	// work as after a normal pull.
	StoreLayerBlobs bool `toml:"store_layer_blobs"`
}

// CRI is the [cri] table: an image service for kubelet that forwards to
// containerd's CRI plugin and keeps the credentials of each pull for
// lazypulld's own reads of the image's layers.
type CRI struct {
	// Address is the unix socket on which lazypulld serves the CRI image
	// service (point kubelet's --image-service-endpoint at
	// unix://<address>). Every call is forwarded to containerd's CRI
	// plugin; the credentials a pull carries (from the pod's image pull
	// secrets) are kept in memory, by registry host and repository, for
	// lazypulld's reads of that image. Empty, the default, turns it off.
	Address string `toml:"address"`

	// CredentialTTL is how long the credentials of a pull are kept after
	// it; a later pull of the same repository renews them. Reads of layers
	// not yet local need them until the background fetch has brought the
	// whole image.
	CredentialTTL Duration `toml:"credential_ttl"`
}

// minCacheSize is the least non-zero cache.max_size accepted: a smaller
// bound is more likely a missing unit than a wish.
const minCacheSize = MiB

// Default returns the configuration used when no file is given.
func Default() *Config {
	return &Config{
		Root:     DefaultRoot,
		Address:  DefaultAddress,
		LogLevel: DefaultLogLevel,
		Remote: Remote{
			HostsDir:        DefaultHostsDir,
			RequestTimeout:  Duration{30 * time.Second},
			StallTimeout:    Duration{3 * time.Second},
			Retries:         3,
			WarmConnections: 8,
			SpoolMaxSize:    2 * GiB,
		},
		FS: FS{
			TailSize:           512 * KiB,
			MemoryCacheSize:    64 * MiB,
			ResolveConcurrency: 16,

			ReadaheadSize:              2 * MiB,
			DirPrefetchSize:            512 * KiB,
			FetchConcurrency:           4,
			PrefetchWait:               Duration{0},
			BackgroundFetch:            true,
			BackgroundFetchDelay:       Duration{500 * time.Millisecond},
			BackgroundFetchConcurrency: 4,
			Passthrough:                true,
			LoaderPrefetch:             true,
			Verify:                     "auto",
			VerifyConcurrency:          2,
			VerifySpoolSize:            8 * GiB,

			MaxTOCCompressedSize: 32 * MiB,
			MaxTOCSize:           96 * MiB,
			MaxTOCEntries:        300000,
			MaxNameLength:        4096,
			MaxPathDepth:         512,
			MaxChunkSize:         64 * MiB,
		},
		Cache: Cache{
			MaxSize: 10 * GiB,
		},
		Containerd: Containerd{
			Address:         "/run/containerd/containerd.sock",
			Snapshotter:     "lazypull",
			StoreLayerBlobs: true,
		},
		CRI: CRI{
			CredentialTTL: Duration{24 * time.Hour},
		},
		Profile:     defaultProfile(),
		Snapshotter: Snapshotter{Fallback: FallbackPull},
		Metrics:     Metrics{MaxHosts: 32},
	}
}

// Validate checks the values that decoding alone cannot check. Each error
// names the key it is about; all problems are reported at once.
func (c *Config) Validate() error {
	var errs []error
	if err := absPath(c.Root); err != nil {
		errs = append(errs, fmt.Errorf("root: %w", err))
	}
	if err := absPath(c.Address); err != nil {
		errs = append(errs, fmt.Errorf("address: %w", err))
	}
	if !slices.Contains(LogLevels, c.LogLevel) {
		errs = append(errs, fmt.Errorf("log_level: %q is not one of %v", c.LogLevel, LogLevels))
	}
	if c.Remote.HostsDir != "" && !filepath.IsAbs(c.Remote.HostsDir) {
		errs = append(errs, fmt.Errorf("remote.hosts_dir: %q is not an absolute path", c.Remote.HostsDir))
	}
	if c.Remote.RequestTimeout.Duration <= 0 {
		errs = append(errs, errors.New("remote.request_timeout: must be greater than 0"))
	}
	if c.Remote.StallTimeout.Duration <= 0 {
		errs = append(errs, errors.New("remote.stall_timeout: must be greater than 0"))
	}
	if c.Remote.Retries < 0 {
		errs = append(errs, fmt.Errorf("remote.retries: %d is negative", c.Remote.Retries))
	}
	if c.Remote.WarmConnections < 0 {
		errs = append(errs, fmt.Errorf("remote.warm_connections: %d is negative", c.Remote.WarmConnections))
	}
	if c.FS.TailSize < 64 {
		errs = append(errs, fmt.Errorf("fs.tail_size: %s is less than 64 bytes", c.FS.TailSize))
	}
	if c.FS.ResolveConcurrency < 1 {
		errs = append(errs, fmt.Errorf("fs.resolve_concurrency: %d is less than 1", c.FS.ResolveConcurrency))
	}
	if c.FS.DirPrefetchSize > 256*MiB {
		errs = append(errs, fmt.Errorf("fs.dir_prefetch_size: %s is more than 256MiB", c.FS.DirPrefetchSize))
	}
	if c.FS.ReadaheadSize > 256*MiB {
		errs = append(errs, fmt.Errorf("fs.readahead_size: %s is more than 256MiB", c.FS.ReadaheadSize))
	}
	if c.FS.FetchConcurrency < 1 {
		errs = append(errs, fmt.Errorf("fs.fetch_concurrency: %d is less than 1", c.FS.FetchConcurrency))
	}
	if c.FS.BackgroundFetchConcurrency < 1 {
		errs = append(errs, fmt.Errorf("fs.background_fetch_concurrency: %d is less than 1", c.FS.BackgroundFetchConcurrency))
	}
	if !slices.Contains(VerifyModes, c.FS.Verify) {
		errs = append(errs, fmt.Errorf("fs.verify: %q is not one of %v", c.FS.Verify, VerifyModes))
	}
	if c.FS.VerifyConcurrency < 1 {
		errs = append(errs, fmt.Errorf("fs.verify_concurrency: %d is less than 1", c.FS.VerifyConcurrency))
	}
	if c.Containerd.Address != "" && !filepath.IsAbs(c.Containerd.Address) {
		errs = append(errs, fmt.Errorf("containerd.address: %q is not an absolute path", c.Containerd.Address))
	}
	if c.Containerd.Address != "" && c.Containerd.Snapshotter == "" {
		errs = append(errs, errors.New("containerd.snapshotter: must not be empty when containerd.address is set"))
	}
	errs = append(errs, c.FS.validateLimits()...)
	if c.Cache.Dir != "" {
		if err := absPath(c.Cache.Dir); err != nil {
			errs = append(errs, fmt.Errorf("cache.dir: %w", err))
		}
	}
	if c.Cache.MaxSize != 0 && c.Cache.MaxSize < minCacheSize {
		errs = append(errs, fmt.Errorf("cache.max_size: %s is less than %s (0 means no bound)", c.Cache.MaxSize, minCacheSize))
	}
	errs = append(errs, c.CRI.validate(c.Address, c.Containerd.Address)...)
	errs = append(errs, c.Profile.validate()...)
	errs = append(errs, c.Snapshotter.validate()...)
	errs = append(errs, c.Metrics.validate(c.Address, c.CRI.Address)...)
	return errors.Join(errs...)
}

func (c *CRI) validate(snapshotsAddress, containerdAddress string) []error {
	if c.Address == "" {
		return nil
	}
	var errs []error
	if err := absPath(c.Address); err != nil {
		errs = append(errs, fmt.Errorf("cri.address: %w", err))
	} else if filepath.Clean(c.Address) == filepath.Clean(snapshotsAddress) {
		errs = append(errs, fmt.Errorf("cri.address: %q is also the snapshots socket (address)", c.Address))
	}
	if containerdAddress == "" {
		errs = append(errs, errors.New("cri.address: the image service forwards to containerd: containerd.address must not be empty"))
	}
	if c.CredentialTTL.Duration <= 0 {
		errs = append(errs, errors.New("cri.credential_ttl: must be greater than 0"))
	}
	return errs
}

func absPath(p string) error {
	switch {
	case p == "":
		return errors.New("must not be empty")
	case !filepath.IsAbs(p):
		return fmt.Errorf("%q is not an absolute path", p)
	case filepath.Clean(p) == "/":
		return errors.New(`must not be "/"`)
	}
	return nil
}

// minLimitSize is the least of the size limits of [fs]: below it, ordinary
// layers would not mount.
const minLimitSize = 64 * KiB

func (f *FS) validateLimits() []error {
	var errs []error
	size := func(key string, v Size) {
		switch {
		case v < minLimitSize:
			errs = append(errs, fmt.Errorf("fs.%s: %s is less than %s", key, v, minLimitSize))
		case v > TiB:
			errs = append(errs, fmt.Errorf("fs.%s: %s is more than %s", key, v, TiB))
		}
	}
	count := func(key string, v, lo, hi int) {
		if v < lo || v > hi {
			errs = append(errs, fmt.Errorf("fs.%s: %d is not between %d and %d", key, v, lo, hi))
		}
	}
	size("max_toc_compressed_size", f.MaxTOCCompressedSize)
	size("max_toc_size", f.MaxTOCSize)
	size("max_chunk_size", f.MaxChunkSize)
	count("max_toc_entries", f.MaxTOCEntries, 1024, 1<<30)
	count("max_name_length", f.MaxNameLength, 255, 4096)
	count("max_path_depth", f.MaxPathDepth, 16, 2048)
	return errs
}
