// Package cache is lazypull's node-wide store of decompressed chunks: one
// directory shared by every layer and image on the node, keyed by the digest
// of the uncompressed chunk, bounded in size, and reused after a restart.
//
// # Layout
//
// A Dir keeps one file per entry, named by the entry's digest, under a
// two-hex-digit fan-out directory (sha256/ab/abcdef...). The file holds the
// entry's bytes and nothing else, so that another process (a FUSE server
// that outlives the daemon, say) can read an entry by path alone. Entries
// are written to tmp/ and renamed into place, so a reader sees a whole entry
// or none.
//
// # Trust and durability
//
// Entries are not fsynced and not verified on read. The cache is untrusted
// storage and its consumer (package fs) verifies every entry against its
// digest before use, so an entry that a crash or a bad disk left empty,
// short or garbled costs a refetch, never wrong bytes. An fsync per entry
// would put a disk flush on the read path of a lazily pulled file to protect
// data that can always be fetched again. The only durability the cache
// relies on is rename's atomicity; NewDir removes what a crash leaves in
// tmp/ and drops empty entries, the typical remains of a rename whose data
// never reached the disk.
//
// # Size and recency
//
// The cache is bounded (WithMaxSize) and evicts the least recently used
// entries to stay under its bound. Recency lives in memory as an LRU list
// and on disk as each file's modification time: Put sets it, and a hit sets
// it again at most once per touchInterval, so recency survives a restart to
// within that interval at the cost of one utimensat per hot entry per
// interval. The mtime is used rather than the atime because mounts with
// noatime or relatime do not keep the atime, and rather than an index file
// because the directory is already the truth about what is cached: an index
// would have to be written, fsynced and reconciled with it after a crash.
//
// NewDir returns at once and indexes existing entries in the background
// (BenchmarkIndex: about 0.5s for 100k entries with warm inode caches);
// Get and Put work meanwhile, and eviction starts when the index is
// complete.
//
// Eviction unlinks the file. A reader that already opened it (Get copying
// the entry, or the holder of a file from Open) keeps reading the whole
// entry: on Linux an unlinked file's data lives until its last descriptor is
// closed. Such data is no longer counted against the bound.
//
// # Sharing a directory
//
// Several Dirs may use one directory at once: lazypull's data planes of two
// versions share the node's cache during an upgrade. Entries are shared
// through the files: an entry one Dir stores, every Dir reads. Each Dir
// writes through a temporary directory of its own (tmp/<random>, flocked
// while the Dir lives), so that a Dir starting up removes only what a Dir
// that is gone left there; a Dir that finds the directory unused (no other
// Dir holds root's lock) removes all of tmp/. What each Dir indexes, counts
// and evicts is what it found at start and what it stored since, so:
//
//   - the bound holds per Dir: while two Dirs run, the directory may hold up
//     to the sum of their bounds, until the survivor's next start;
//   - an entry one Dir evicts or replaces, the other may still index: its
//     Has then answers for an entry that is gone, and its Get misses, which
//     costs a refetch, never wrong bytes (the consumer verifies every hit);
//   - an entry the other Dir stored is not in this Dir's index, so Has does
//     not see it once indexing is done, though Get finds it.
//
// # Write errors
//
// When a write fails (the disk is full, say), the cache logs it once, stops
// writing for a while (Put then drops data and returns nil), and, for a full
// disk, lowers its bound below its current size for the rest of the Dir's
// life and evicts down to it. Reads are unaffected: a missing entry is a
// miss, and the consumer reads from the registry.
package cache

import (
	"container/list"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
)

const (
	// tmpName holds, one directory per Dir, entries being written; it is
	// on the same filesystem as the entries, so that rename is atomic.
	tmpName = "tmp"
	// lockFile is held with a shared flock by every Dir using root, and
	// with an exclusive one by a Dir that finds itself alone.
	lockFile = "lock"
	// touchInterval bounds how often a hit rewrites an entry's mtime.
	touchInterval = time.Minute
	// minPause and maxPause bound how long writes stop after a write error;
	// the pause doubles with each error in a row.
	minPause = 10 * time.Second
	maxPause = 5 * time.Minute
	// stripes is the number of locks that serialise the file changes of
	// one key (rename, unlink) with its index entry.
	stripes = 64
)

// DefaultMaxSize is the bound of a Dir made without WithMaxSize.
const DefaultMaxSize = 10 << 30

// Option configures a Dir.
type Option func(*options) error

type options struct {
	maxSize int64
}

// WithMaxSize bounds the bytes of entries the cache keeps (default
// DefaultMaxSize); 0 means no bound. The files' own sizes are counted, not
// the blocks or directories they take.
func WithMaxSize(n int64) Option {
	return func(o *options) error {
		if n < 0 {
			return fmt.Errorf("cache: max size %d: %w", n, errdefs.ErrInvalidArgument)
		}
		o.maxSize = n
		return nil
	}
}

// Dir is a cache in a directory. It is safe for concurrent use. Close stops
// its background indexing and releases the directory.
type Dir struct {
	root string
	lock *os.File // shared flock on root's lock file
	tmp  *tmpDir  // where this Dir writes entries before renaming them

	stop      chan struct{} // closed by Close
	indexed   chan struct{} // closed when the background index is merged
	closeOnce sync.Once

	keyMu [stripes]sync.Mutex

	mu          sync.Mutex
	entries     map[digest.Digest]*list.Element // of *entry
	lru         list.List                       // most recently used first
	size        int64                           // bytes of the entries indexed
	limit       int64                           // bound in force; math.MaxInt64 if none
	indexing    bool
	gone        map[digest.Digest]struct{} // deleted while indexing
	used        map[digest.Digest]int64    // hit while indexing, not yet indexed: unix nanos
	pausedUntil time.Time
	pause       time.Duration // length of the last pause; 0 once a write succeeds
	evictions   uint64
	writeErrs   uint64
	dropped     uint64

	hits, misses atomic.Uint64

	// now is time.Now, replaceable by tests.
	now func() time.Time
}

// entry is an indexed cache entry.
type entry struct {
	key     digest.Digest
	size    int64
	touched int64 // unix nanos the file's mtime was last set to
}

// NewDir returns the cache stored under root, creating root if needed and
// removing temporary files that a crash left behind. Existing entries are
// indexed in the background.
//
// Several Dirs, in one process or in several, may use one directory at
// the same time (see "Sharing a directory" in the package doc).
func NewDir(root string, opts ...Option) (*Dir, error) {
	o := options{maxSize: DefaultMaxSize}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	lock, tmp, err := share(root)
	if err != nil {
		return nil, err
	}
	d := &Dir{
		root:     root,
		lock:     lock,
		tmp:      tmp,
		stop:     make(chan struct{}),
		indexed:  make(chan struct{}),
		entries:  map[digest.Digest]*list.Element{},
		limit:    o.maxSize,
		indexing: true,
		gone:     map[digest.Digest]struct{}{},
		used:     map[digest.Digest]int64{},
		now:      time.Now,
	}
	if d.limit == 0 {
		d.limit = math.MaxInt64
	}
	go d.index()
	return d, nil
}

// Close stops the background indexing, waits for it and releases the
// directory. The Dir must not be used afterwards.
func (d *Dir) Close() error {
	var err error
	d.closeOnce.Do(func() {
		close(d.stop)
		<-d.indexed
		err = errors.Join(d.tmp.remove(), d.lock.Close())
	})
	return err
}

// Root is the directory the cache is stored in.
func (d *Dir) Root() string { return d.root }

// Get copies the entry of key into p and returns its length. ok is false if
// there is no such entry, it does not fit in p, or it cannot be read. The
// bytes are the file's, unverified: a crash may have left them short or
// garbled, which the caller must check against key.
func (d *Dir) Get(key digest.Digest, p []byte) (n int, ok bool) {
	path, err := d.path(key)
	if err != nil {
		d.misses.Add(1)
		return 0, false
	}
	f, err := os.Open(path)
	if err != nil {
		d.misses.Add(1)
		return 0, false
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() > int64(len(p)) {
		d.misses.Add(1)
		return 0, false
	}
	n, err = io.ReadFull(f, p[:st.Size()])
	if err != nil {
		d.misses.Add(1)
		return 0, false
	}
	d.hits.Add(1)
	d.markUsed(key, path)
	return n, true
}

// Open returns the file of key's entry, opened for reading, for a caller
// that hands it on (FUSE passthrough) instead of copying it. The caller
// closes it. The file is unverified: verify it before serving from it. It
// stays readable if the entry is evicted meanwhile. A missing entry is an
// error matching errdefs.ErrNotFound and fs.ErrNotExist.
func (d *Dir) Open(key digest.Digest) (*os.File, error) {
	path, err := d.path(key)
	if err != nil {
		d.misses.Add(1)
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		d.misses.Add(1)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("cache: entry %s: %w (%w)", key, errdefs.ErrNotFound, err)
		}
		return nil, fmt.Errorf("cache: %w", err)
	}
	d.hits.Add(1)
	d.markUsed(key, path)
	return f, nil
}

// Has returns the size of key's entry, if there is one, without reading it
// and without counting a hit or a use: for a caller that takes stock of what
// is cached (read-ahead, background fetch) rather than reading it. Once the
// entries found at start are indexed, the index answers, with no system
// call; until then, the entry's file.
func (d *Dir) Has(key digest.Digest) (size int64, ok bool) {
	d.mu.Lock()
	el, indexed := d.entries[key]
	if indexed {
		size = el.Value.(*entry).size
	}
	indexing := d.indexing
	d.mu.Unlock()
	if indexed || !indexing {
		return size, indexed
	}
	path, err := d.path(key)
	if err != nil {
		return 0, false
	}
	st, err := os.Stat(path)
	if err != nil || !st.Mode().IsRegular() {
		return 0, false
	}
	return st.Size(), true
}

// Put stores data under key. An existing entry is replaced: the caller may
// have found it corrupt. Data larger than the bound is not stored. After a
// write error, writes stop for a while: Put then drops data and returns nil,
// as a cache may lose an entry at any time anyway, and a caller can do
// nothing with an error per chunk but log it. Put does not retain data.
func (d *Dir) Put(key digest.Digest, data []byte) error {
	path, err := d.path(key)
	if err != nil {
		return err
	}
	size := int64(len(data))
	if !d.accept(size) {
		return nil
	}
	victims, err := d.write(key, path, size, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
	if err != nil {
		d.writeFailed(err, size)
		return err
	}
	d.evict(victims)
	return nil
}

// accept says whether an entry of size bytes may be written now.
func (d *Dir) accept(size int64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if size > d.limit || d.now().Before(d.pausedUntil) {
		d.dropped++
		return false
	}
	return true
}

// write stores the size bytes that fill writes as key's file and indexes
// it. It returns the entries to evict to stay under the bound.
func (d *Dir) write(key digest.Digest, path string, size int64, fill func(*os.File) error) (_ []*entry, retErr error) {
	tmp, err := os.CreateTemp(d.tmp.path, "")
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	defer func() {
		if retErr != nil {
			os.Remove(tmp.Name())
		}
	}()
	err = fill(tmp)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("cache: write %s: %w", key, err)
	}
	// The rename and the index change happen under the key's lock, so
	// that an eviction of the entry being replaced cannot unlink the new
	// file (see evict).
	km := d.keyLock(key)
	km.Lock()
	defer km.Unlock()
	err = os.Rename(tmp.Name(), path)
	if errors.Is(err, fs.ErrNotExist) {
		// The first entry of its fan-out directory: creating the
		// directory only then saves a syscall on every other Put.
		if err = os.MkdirAll(filepath.Dir(path), 0o700); err == nil {
			err = os.Rename(tmp.Name(), path)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	return d.added(key, size), nil
}

// Delete removes the entry of key, if any.
func (d *Dir) Delete(key digest.Digest) error {
	path, err := d.path(key)
	if err != nil {
		return err
	}
	km := d.keyLock(key)
	km.Lock()
	defer km.Unlock()
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cache: %w", err)
	}
	d.mu.Lock()
	d.forget(key)
	if d.indexing {
		d.gone[key] = struct{}{}
		delete(d.used, key)
	}
	d.mu.Unlock()
	return nil
}

// Stats is a snapshot of a cache's state and counters.
type Stats struct {
	// Entries and Bytes are what is indexed; while Indexing, entries
	// from before NewDir may be missing.
	Entries int
	Bytes   int64
	// Limit is the bound in force (lowered after the disk filled up); 0
	// means none.
	Limit    int64
	Indexing bool
	// Hits and Misses count Get and Open calls.
	Hits, Misses uint64
	// Evictions counts entries removed to stay under the bound.
	Evictions uint64
	// WriteErrors counts failed writes; Dropped counts Puts not written
	// because writes were paused or the entry was larger than the bound.
	WriteErrors, Dropped uint64
}

// Stats returns the cache's current state and counters.
func (d *Dir) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := Stats{
		Entries:     len(d.entries),
		Bytes:       d.size,
		Limit:       d.limit,
		Indexing:    d.indexing,
		Hits:        d.hits.Load(),
		Misses:      d.misses.Load(),
		Evictions:   d.evictions,
		WriteErrors: d.writeErrs,
		Dropped:     d.dropped,
	}
	if s.Limit == math.MaxInt64 {
		s.Limit = 0
	}
	return s
}

// path returns where the entry of key lives. Keys are validated, so a key
// cannot name a path outside the cache.
func (d *Dir) path(key digest.Digest) (string, error) {
	if err := key.Validate(); err != nil {
		return "", fmt.Errorf("cache: key %q: %w", key, err)
	}
	enc := key.Encoded()
	return filepath.Join(d.root, key.Algorithm().String(), enc[:2], enc), nil
}

func (d *Dir) keyLock(key digest.Digest) *sync.Mutex {
	enc := key.Encoded()
	var h uint32
	for i := 0; i < len(enc) && i < 8; i++ {
		h = h*31 + uint32(enc[i])
	}
	return &d.keyMu[h%stripes]
}
