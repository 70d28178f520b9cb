package convert

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// DefaultJobs is how many layers are converted at the same time unless
// WithJobs says otherwise. Each job holds up to two temporary copies of its
// layer (the decompressed tar and the eStargz blob) on disk.
const DefaultJobs = 3

type config struct {
	prioritized      []string
	chunkSize        int
	compressionLevel int
	hasLevel         bool
	platforms        []v1.Platform
	jobs             int
	tempDir          string
	plainHTTP        bool
	keychain         authn.Keychain
	transport        http.RoundTripper
	progress         func(Progress)
	userAgent        string
}

// Opt configures Convert.
type Opt func(*config) error

// WithPrioritizedFiles lists paths (relative to the root of the image, as
// in the tar; a leading "/" is allowed) to place first in every layer that
// holds them, followed by a .prefetch.landmark entry: the files a workload
// reads at start-up, which a lazy puller prefetches. A file is moved with
// its parent directories, so it counts as held by a layer only if the layer
// has entries for those too. Layers holding none of the files, and every
// layer when the list is empty, get .no.prefetch.landmark.
func WithPrioritizedFiles(paths []string) Opt {
	return func(c *config) error {
		c.prioritized = append([]string(nil), paths...)
		return nil
	}
}

// WithChunkSize sets the size in bytes of the chunks large files are split
// into (each is compressed and fetched on its own). Zero keeps the estargz
// default (4 MiB).
func WithChunkSize(n int) Opt {
	return func(c *config) error {
		if n < 0 {
			return fmt.Errorf("chunk size %d: must not be negative", n)
		}
		c.chunkSize = n
		return nil
	}
}

// WithCompressionLevel sets the gzip level, from 0 (none) to 9 (best, the
// estargz default).
func WithCompressionLevel(level int) Opt {
	return func(c *config) error {
		if level < 0 || level > 9 {
			return fmt.Errorf("compression level %d: must be between 0 and 9", level)
		}
		c.compressionLevel, c.hasLevel = level, true
		return nil
	}
}

// WithPlatforms restricts the conversion of a multi-platform index to the
// manifests whose platform satisfies one of ps (v1.Platform.Satisfies); the
// others are left out of the converted index. For a single-manifest source,
// its config's platform must satisfy one of them.
func WithPlatforms(ps ...v1.Platform) Opt {
	return func(c *config) error {
		c.platforms = append(c.platforms, ps...)
		return nil
	}
}

// WithJobs bounds how many layers are fetched, converted and pushed at the
// same time (default DefaultJobs).
func WithJobs(n int) Opt {
	return func(c *config) error {
		if n < 1 {
			return fmt.Errorf("jobs %d: must be at least 1", n)
		}
		c.jobs = n
		return nil
	}
}

// WithTempDir sets where layers are staged while they are converted (default
// os.TempDir()). Everything written there is removed before Convert returns.
func WithTempDir(dir string) Opt {
	return func(c *config) error {
		c.tempDir = dir
		return nil
	}
}

// WithPlainHTTP talks plain HTTP to the source and destination registries.
// Loopback and private-network registries are reached over plain HTTP
// without it.
func WithPlainHTTP() Opt {
	return func(c *config) error {
		c.plainHTTP = true
		return nil
	}
}

// WithKeychain sets where registry credentials come from (default
// authn.DefaultKeychain: the docker config and its credential helpers).
func WithKeychain(k authn.Keychain) Opt {
	return func(c *config) error {
		if k == nil {
			return errors.New("nil keychain")
		}
		c.keychain = k
		return nil
	}
}

// WithTransport sets the HTTP transport used for both registries.
func WithTransport(t http.RoundTripper) Opt {
	return func(c *config) error {
		c.transport = t
		return nil
	}
}

// WithUserAgent sets the User-Agent sent to registries.
func WithUserAgent(ua string) Opt {
	return func(c *config) error {
		c.userAgent = ua
		return nil
	}
}

// WithProgress has Convert report each layer's progress to fn. Calls are
// serialized (fn need not be safe for concurrent use) and must return
// quickly: conversion waits for them.
func WithProgress(fn func(Progress)) Opt {
	return func(c *config) error {
		c.progress = fn
		return nil
	}
}

// Phase is a step of a layer's conversion.
type Phase int

// The phases of a layer, in the order a layer goes through them.
const (
	// PhaseQueued: waiting for a free job.
	PhaseQueued Phase = iota
	// PhaseFetching: downloading and decompressing the source layer.
	// Progress.Bytes counts uncompressed bytes.
	PhaseFetching
	// PhaseConverting: building the eStargz blob.
	// Progress.Bytes counts compressed output bytes.
	PhaseConverting
	// PhasePushing: uploading the eStargz blob; Progress.Total is its size.
	PhasePushing
	// PhaseDone: the converted layer is in the destination repository.
	PhaseDone
	// PhaseSkipped: left unconverted (a non-distributable layer), or for an
	// index entry (Progress.Layer < 0) left out of the converted index.
	PhaseSkipped
	// PhaseFailed: Progress.Err says why.
	PhaseFailed
)

func (p Phase) String() string {
	switch p {
	case PhaseQueued:
		return "queued"
	case PhaseFetching:
		return "fetching"
	case PhaseConverting:
		return "converting"
	case PhasePushing:
		return "pushing"
	case PhaseDone:
		return "done"
	case PhaseSkipped:
		return "skipped"
	case PhaseFailed:
		return "failed"
	}
	return fmt.Sprintf("phase(%d)", int(p))
}

// Progress reports one step of one layer.
type Progress struct {
	// Platform is the image's platform ("linux/amd64"), or "" when the
	// source image does not say.
	Platform string
	// Layer is the index of the layer in its manifest, Layers the number of
	// layers of that manifest. Layer is -1 for events about a whole manifest.
	Layer, Layers int
	// Source is the digest of the source layer (or manifest).
	Source v1.Hash
	Phase  Phase
	// Bytes done in this phase so far; Total expected when known, else 0.
	Bytes, Total int64
	// Reason says why a layer or manifest was skipped.
	Reason string
	// Err is set in PhaseFailed.
	Err error
}
