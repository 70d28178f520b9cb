package config

import (
	"errors"
	"fmt"
	"time"
)

// Profile is the [profile] table: start-up profiles. A profile lists the
// chunks of file contents a container of an image read within its first
// seconds, in the order read; the next cold start of the image (its
// chunks evicted from the cache, or on another node) fetches them as soon
// as the layers are mounted, as for an image optimized at conversion.
// Profiles are kept under <root>/profiles, by the image's layers.
type Profile struct {
	// Record records a profile of each image whose layers are mounted
	// lazily and that has none recorded on this node yet: what readers
	// of its layers read within Window.
	Record bool `toml:"record"`

	// Fetch looks, when an image's layers are mounted, for a profile
	// published for its manifest as an OCI referrer in its registry
	// (`lazypull profile push`), when the node has none for the image,
	// and applies it.
	Fetch bool `toml:"fetch"`

	// Window is how long a recording lasts: from the first read of the
	// image's layers (or, where the layer filesystem does not report reads
	// one by one, from the mount of the image's layers).
	Window Duration `toml:"window"`

	// Idle ends a recording early when no new chunk was read for that long.
	Idle Duration `toml:"idle"`

	// MaxSize bounds a profile's JSON, recorded or fetched; a larger one
	// is refused whole.
	MaxSize Size `toml:"max_size"`

	// MaxEntries bounds the chunks a profile lists; a recording ends when
	// it reaches it, a fetched profile beyond it is refused.
	MaxEntries int `toml:"max_entries"`

	// MaxProfiles bounds the profiles kept on the node; the least
	// recently written are removed first.
	MaxProfiles int `toml:"max_profiles"`
}

func defaultProfile() Profile {
	return Profile{
		Record:      true,
		Fetch:       true,
		Window:      Duration{10 * time.Second},
		Idle:        Duration{2 * time.Second},
		MaxSize:     4 * MiB,
		MaxEntries:  65536,
		MaxProfiles: 1024,
	}
}

// Bounds of the [profile] keys.
const (
	minProfileSize    = KiB
	maxProfileSize    = 64 * MiB
	maxProfileEntries = 1 << 20
)

func (p *Profile) validate() []error {
	var errs []error
	if p.Window.Duration <= 0 {
		errs = append(errs, errors.New("profile.window: must be greater than 0"))
	}
	if p.Idle.Duration <= 0 {
		errs = append(errs, errors.New("profile.idle: must be greater than 0"))
	}
	if p.MaxSize < minProfileSize || p.MaxSize > maxProfileSize {
		errs = append(errs, fmt.Errorf("profile.max_size: %s is not between %s and %s", p.MaxSize, Size(minProfileSize), Size(maxProfileSize)))
	}
	if p.MaxEntries < 1 || p.MaxEntries > maxProfileEntries {
		errs = append(errs, fmt.Errorf("profile.max_entries: %d is not between 1 and %d", p.MaxEntries, maxProfileEntries))
	}
	if p.MaxProfiles < 1 {
		errs = append(errs, fmt.Errorf("profile.max_profiles: %d is less than 1", p.MaxProfiles))
	}
	return errs
}
