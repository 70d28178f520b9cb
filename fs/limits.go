package fs

import (
	"fmt"

	"github.com/containerd/errdefs"
)

// Limits bound what a layer's footer and TOC may make the FileSystem
// fetch, inflate, hold in memory and serve. Whoever publishes an image
// writes its TOC, and its digest only proves that the TOC is the one they
// published: a layer beyond a limit is not mounted (Mount fails, and the
// layer is pulled the normal way), whatever its TOC digest.
//
// With DefaultLimits, the memory a layer's TOC takes while it is parsed is
// at most about 550 MiB, whatever the layer holds, and 250 MiB while the
// layer is mounted (measured by TestTOCMemory; see README, "What it
// guarantees"); real layers take far less: a Debian base layer of 7,000
// files about 8 MiB.
type Limits struct {
	// TOCCompressedSize bounds the bytes between the footer's TOC offset
	// and the footer: the compressed TOC, fetched whole.
	TOCCompressedSize int64
	// TOCSize bounds the TOC's JSON, inflated.
	TOCSize int64
	// Entries bounds the TOC's entries with the directories their paths
	// imply, and, separately, the xattrs of all its entries together.
	Entries int
	// NameLength bounds an entry's path, in bytes.
	NameLength int
	// PathDepth bounds the number of components of an entry's path.
	PathDepth int
	// ChunkSize bounds a chunk of a file: the bytes it inflates to and the
	// compressed bytes of its span of the blob, each fetched and held in
	// memory whole by a read of it.
	ChunkSize int64
}

// Defaults of Limits. A Debian base layer has about 7,000 entries in a TOC
// of 2.3 MB of JSON, 350 KiB compressed: about 330 bytes of JSON per entry.
// The largest layers of AI images (a Python environment with CUDA
// libraries) hold up to 100,000 to 200,000 files.
const (
	DefaultMaxTOCCompressedSize = 32 << 20
	DefaultMaxTOCSize           = 96 << 20
	DefaultMaxTOCEntries        = 300_000
	DefaultMaxNameLength        = 4096 // PATH_MAX
	DefaultMaxPathDepth         = 512
	// DefaultMaxChunkSize is 16 times the chunk size eStargz builders use
	// by default (4 MiB).
	DefaultMaxChunkSize = 64 << 20
)

// DefaultLimits returns the limits a FileSystem applies unless told
// otherwise.
func DefaultLimits() Limits {
	return Limits{
		TOCCompressedSize: DefaultMaxTOCCompressedSize,
		TOCSize:           DefaultMaxTOCSize,
		Entries:           DefaultMaxTOCEntries,
		NameLength:        DefaultMaxNameLength,
		PathDepth:         DefaultMaxPathDepth,
		ChunkSize:         DefaultMaxChunkSize,
	}
}

// Floors of Limits: below them, ordinary layers would not mount.
const (
	minLimitSize    = 64 << 10
	minLimitEntries = 1024
	minNameLength   = 255 // NAME_MAX: one component
	minPathDepth    = 16
)

// WithLimits sets the limits layers are checked against (default
// DefaultLimits()).
func WithLimits(lim Limits) Option {
	return func(c *config) error {
		var bad string
		switch {
		case lim.TOCCompressedSize < minLimitSize:
			bad = fmt.Sprintf("compressed TOC size %d is less than %d", lim.TOCCompressedSize, minLimitSize)
		case lim.TOCSize < minLimitSize:
			bad = fmt.Sprintf("TOC size %d is less than %d", lim.TOCSize, minLimitSize)
		case lim.Entries < minLimitEntries:
			bad = fmt.Sprintf("TOC entries %d is less than %d", lim.Entries, minLimitEntries)
		case lim.NameLength < minNameLength:
			bad = fmt.Sprintf("name length %d is less than %d", lim.NameLength, minNameLength)
		case lim.PathDepth < minPathDepth:
			bad = fmt.Sprintf("path depth %d is less than %d", lim.PathDepth, minPathDepth)
		case lim.ChunkSize < minLimitSize:
			bad = fmt.Sprintf("chunk size %d is less than %d", lim.ChunkSize, minLimitSize)
		}
		if bad != "" {
			return fmt.Errorf("limits: %s: %w", bad, errdefs.ErrInvalidArgument)
		}
		c.limits = lim
		return nil
	}
}
