// Package profile learns which chunks of an image's layers a container
// reads as it starts, keeps what it learned on the node and shares it
// through the image's registry.
//
// A Profile lists, for one image (its layers, bottom first), the chunks of
// file contents that a container of the image read within its first
// seconds, in the order they were first read. A node that mounts the image
// again cold (its chunk cache evicted, or another node that fetched the
// profile) prefetches those chunks, in that order, as soon as each layer is
// mounted: the image starts as if it had been optimized (its start-up files
// moved to the front of its layers), without converting it again.
//
// The package has four parts, each usable alone:
//
//   - the format (Profile, Encode, Decode): JSON of media type MediaType,
//     decoded strictly and within Limits, since a profile may come from a
//     registry and is as untrusted as any image content;
//   - Store, the profiles of a node, in a directory of its own;
//   - Recorder, which turns the reads of the layers of images being
//     started into profiles, and Replay, which turns a profile into the
//     prefetch of the layers mounted;
//   - Client, which publishes a profile as an OCI referrer of the image's
//     manifest (an artifact manifest whose subject is the image manifest)
//     and finds it again, through the referrers API or, for registries
//     without it, the referrers tag schema.
//
// It imports no other package of lazypull: the caller gives it the HTTP
// clients of a registry (Registry), tells the Recorder of reads and
// prefetches what the Replay hands out.
package profile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"path"
	"strings"
	"unicode/utf8"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
)

// Media types of a published profile.
const (
	// MediaType is the media type of a profile's JSON, the one layer of
	// the artifact manifest that carries it.
	MediaType = "application/vnd.lazypull.profile.v1+json"
	// ArtifactType is the artifactType of the artifact manifest, which
	// the referrers API filters by.
	ArtifactType = MediaType
)

// Version is the version of the format this package reads and writes.
const Version = 1

// Profile is what a container of an image read first.
type Profile struct {
	// Version is 1.
	Version int `json:"version"`
	// Layers are the digests of the image's layers, bottom first: the
	// image the profile is for, whatever its name or manifest.
	Layers []digest.Digest `json:"layers"`
	// Reads are the chunks read, each once, in the order first read.
	Reads []Read `json:"reads"`
}

// Read is one chunk of a file of a layer.
type Read struct {
	// Layer is the index of the chunk's layer in Profile.Layers.
	Layer int `json:"layer"`
	// Path is the file's name in the layer's table of contents: relative,
	// cleaned, without "." or ".." components.
	Path string `json:"path"`
	// Offset is where the chunk starts in the file; when the profile is
	// applied, a chunk of the layer's TOC must start there.
	Offset int64 `json:"offset"`
}

// Limits bound a profile. A profile beyond them is refused, whole.
type Limits struct {
	// Size bounds a profile's JSON, in bytes.
	Size int64
	// Entries bounds its reads.
	Entries int
}

// Bounds that are not configurable: those of the layer format itself.
const (
	// MaxLayers bounds the layers of a profile's image (overlayfs stacks
	// far fewer).
	MaxLayers = 500
	// maxPathLength and maxNameLength are Linux's PATH_MAX and NAME_MAX.
	maxPathLength = 4096
	maxNameLength = 255
)

// DefaultLimits are the limits of a Store, a Recorder and a Client made
// without others: 4 MiB of JSON, 65,536 chunks (256 GiB of 4 MiB chunks;
// a start that reads more is no start).
var DefaultLimits = Limits{Size: 4 << 20, Entries: 1 << 16}

func (lim Limits) check() error {
	if lim.Size <= 0 || lim.Entries <= 0 {
		return fmt.Errorf("profile limits %+v: both must be positive: %w", lim, errdefs.ErrInvalidArgument)
	}
	return nil
}

// invalid is the error of a profile that breaks its format or its limits.
func invalid(format string, args ...any) error {
	return fmt.Errorf("invalid profile: %s: %w", fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
}

// Validate checks p against the format and lim. The error names the first
// thing wrong: the field, and the entry by its index.
func (p *Profile) Validate(lim Limits) error {
	if err := lim.check(); err != nil {
		return err
	}
	if p.Version != Version {
		return invalid("version %d, want %d", p.Version, Version)
	}
	if len(p.Layers) == 0 || len(p.Layers) > MaxLayers {
		return invalid("%d layers, want 1 to %d", len(p.Layers), MaxLayers)
	}
	for i, d := range p.Layers {
		if err := d.Validate(); err != nil {
			return invalid("layers[%d] %q: %v", i, d, err)
		}
	}
	if len(p.Reads) > lim.Entries {
		return invalid("%d reads, more than %d (limit max_entries)", len(p.Reads), lim.Entries)
	}
	type key struct {
		layer  int
		path   string
		offset int64
	}
	seen := make(map[key]struct{}, len(p.Reads))
	for i, r := range p.Reads {
		if r.Layer < 0 || r.Layer >= len(p.Layers) {
			return invalid("reads[%d]: layer %d, but the profile has %d layers", i, r.Layer, len(p.Layers))
		}
		if err := ValidPath(r.Path); err != nil {
			return invalid("reads[%d]: %v", i, err)
		}
		if r.Offset < 0 {
			return invalid("reads[%d] %s: negative offset %d", i, r.Path, r.Offset)
		}
		k := key{r.Layer, r.Path, r.Offset}
		if _, dup := seen[k]; dup {
			return invalid("reads[%d]: %s at %d of layer %d listed twice", i, r.Path, r.Offset, r.Layer)
		}
		seen[k] = struct{}{}
	}
	return nil
}

// ValidPath checks the name of a file in a layer as a profile holds it:
// relative, clean, valid UTF-8 without NUL, within Linux's bounds.
func ValidPath(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("empty path")
	case len(p) > maxPathLength:
		return fmt.Errorf("path of %d bytes, more than %d", len(p), maxPathLength)
	case !utf8.ValidString(p) || strings.ContainsRune(p, 0):
		return fmt.Errorf("path %q: not valid UTF-8 or holds NUL", p)
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("path %q: absolute", p)
	case path.Clean(p) != p || p == "." || p == ".." || strings.HasPrefix(p, "../"):
		return fmt.Errorf("path %q: not clean (., .., // or a trailing /)", p)
	}
	for _, name := range strings.Split(p, "/") {
		if len(name) > maxNameLength {
			return fmt.Errorf("path %q: a name of %d bytes, more than %d", p, len(name), maxNameLength)
		}
	}
	return nil
}

// Encode returns p as JSON, after checking it against lim.
func Encode(p *Profile, lim Limits) ([]byte, error) {
	if err := p.Validate(lim); err != nil {
		return nil, err
	}
	data, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("encode profile: %w", err)
	}
	if int64(len(data)) > lim.Size {
		return nil, invalid("%d bytes of JSON, more than %d (limit max_size)", len(data), lim.Size)
	}
	return data, nil
}

// Decode reads a profile from r: at most lim.Size bytes of JSON holding
// one object with the fields of Profile and no others, then checked by
// Validate.
func Decode(r io.Reader, lim Limits) (*Profile, error) {
	if err := lim.check(); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(r, lim.Size+1))
	if err != nil {
		return nil, fmt.Errorf("read profile: %w", err)
	}
	if int64(len(data)) > lim.Size {
		return nil, invalid("more than %d bytes (limit max_size)", lim.Size)
	}
	return DecodeBytes(data, lim)
}

// DecodeBytes is Decode of data.
func DecodeBytes(data []byte, lim Limits) (*Profile, error) {
	if err := lim.check(); err != nil {
		return nil, err
	}
	if int64(len(data)) > lim.Size {
		return nil, invalid("%d bytes, more than %d (limit max_size)", len(data), lim.Size)
	}
	var p Profile
	if err := strictJSON(data, &p); err != nil {
		return nil, invalid("%v", err)
	}
	if err := p.Validate(lim); err != nil {
		return nil, err
	}
	return &p, nil
}

// strictJSON decodes data, one JSON value, into v, refusing fields v does
// not have and anything after the value.
func strictJSON(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("data after the JSON value")
	}
	return nil
}

// Key names an image for the profiles of its layers: the hex sha256 of the
// layer digests, bottom first, one per line.
func Key(layers []digest.Digest) string {
	var b strings.Builder
	for _, d := range layers {
		b.WriteString(d.String())
		b.WriteByte('\n')
	}
	return digest.FromString(b.String()).Encoded()
}
