package snapshotter

import (
	"context"
	"errors"
	"fmt"

	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/errdefs"
)

// Classes of the reasons a layer is not mounted lazily, as an Observer is
// told them: a few fixed words, where the reason itself (LabelFallback) is
// free text.
const (
	// FallbackNotAnnotated: the pull did not pass the image reference and
	// layer digest (the client did not annotate the layers for remote
	// snapshotters).
	FallbackNotAnnotated = "not_annotated"
	// FallbackSnapshotConflict: a snapshot of the chain ID exists and
	// cannot serve the request (another parent, another layer not yet
	// verified, or failed verification).
	FallbackSnapshotConflict = "snapshot_conflict"
	// FallbackNoParentChain: the parent snapshot has no chain ID to verify
	// the layer against.
	FallbackNoParentChain = "no_parent_chain"
	// FallbackNotEStargz: the layer is not eStargz, or its manifest gives
	// no TOC digest for it.
	FallbackNotEStargz = "not_estargz"
	// FallbackInvalidLayer: the layer's footer or TOC is invalid, exceeds
	// a limit, or does not match its digest.
	FallbackInvalidLayer = "invalid_layer"
	// FallbackUnauthorized: the registry refused lazypulld's credentials.
	FallbackUnauthorized = "unauthorized"
	// FallbackNotFound: the registry does not have the blob.
	FallbackNotFound = "not_found"
	// FallbackUnavailable: the registry or the data plane could not be
	// reached, or did not answer in time.
	FallbackUnavailable = "unavailable"
	// FallbackOther is any other reason.
	FallbackOther = "other"
)

// Observer is told what becomes of each layer offered for a lazy pull,
// for metrics. Its methods are called on the path of Prepare: they must
// be quick and must not block.
type Observer interface {
	// Mounted is told of a layer mounted lazily.
	Mounted()
	// FellBack is told of a layer that was not, with the class of the
	// reason (one of the Fallback constants).
	FellBack(class string)
}

// WithObserver has o told what becomes of each layer offered for a lazy
// pull.
func WithObserver(o Observer) Opt {
	return func(c *config) error {
		if o == nil {
			return fmt.Errorf("nil Observer: %w", errdefs.ErrInvalidArgument)
		}
		c.observer = o
		return nil
	}
}

// WithFallbackError makes Prepare fail, with an error of class
// FailedPrecondition that names the layer and the reason, for a layer that
// cannot be mounted lazily, instead of returning mounts for containerd to
// apply it into: the pull fails rather than downloading the image.
func WithFallbackError() Opt {
	return func(c *config) error {
		c.fallbackError = true
		return nil
	}
}

type nopObserver struct{}

func (nopObserver) Mounted()        {}
func (nopObserver) FellBack(string) {}

// fallback is why a layer is not mounted lazily.
type fallback struct {
	class  string // a Fallback constant
	reason string // for people
}

// mountFallback is the fallback of a layer whose Mount failed with err.
func mountFallback(err error) *fallback {
	return &fallback{class: mountClass(err), reason: err.Error()}
}

func mountClass(err error) string {
	switch {
	case errdefs.IsNotImplemented(err), errdefs.IsFailedPrecondition(err):
		return FallbackNotEStargz
	case errdefs.IsInvalidArgument(err), errdefs.IsDataLoss(err), errdefs.IsOutOfRange(err), errdefs.IsResourceExhausted(err):
		return FallbackInvalidLayer
	case errdefs.IsUnauthorized(err), errdefs.IsPermissionDenied(err):
		return FallbackUnauthorized
	case errdefs.IsNotFound(err):
		return FallbackNotFound
	case errdefs.IsUnavailable(err), errdefs.IsDeadlineExceeded(err), errors.Is(err, context.DeadlineExceeded):
		return FallbackUnavailable
	}
	return FallbackOther
}

// fallbackError is the error of a Prepare that may not fall back.
func fallbackError(target string, labels map[string]string, fb *fallback) error {
	layer := labels[snapshotters.TargetLayerDigestLabel]
	if layer == "" {
		layer = "of chain ID " + target
	}
	return &noFallbackError{fmt.Sprintf("layer %s cannot be mounted lazily and lazypull's [snapshotter] fallback is \"error\", so the pull fails instead of downloading it: %s (%s)",
		layer, fb.reason, fb.class)}
}

// noFallbackError is of class FailedPrecondition, without the class's
// name in its text: the reason often ends with one already.
type noFallbackError struct{ msg string }

func (e *noFallbackError) Error() string { return e.msg }
func (e *noFallbackError) Unwrap() error { return errdefs.ErrFailedPrecondition }
