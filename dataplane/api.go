package dataplane

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/containerd/errdefs"
)

// Paths of the calls; see the package doc.
const (
	PathInfo     = "/v1/info"
	PathMounts   = "/v1/mounts"
	PathMount    = "/v1/mount"
	PathCheck    = "/v1/check"
	PathUnmount  = "/v1/unmount"
	PathShutdown = "/v1/shutdown"
	// PathVerifications is a long poll; see VerificationList.
	PathVerifications = "/v1/verifications"
	// PathCredentials takes Credentials for the data plane's registry
	// reads (the CRI image service's): served when the FileSystem is a
	// CredentialKeeper.
	PathCredentials = "/v1/credentials"
	// PathRuntime answers Runtime; with the query "gc=1" the data plane
	// first collects its garbage and returns freed memory to the system.
	PathRuntime = "/v1/runtime"
)

// Credentials are registry credentials for one repository, which the data
// plane uses for its reads of that repository's layers until Expires. A
// zero Expires removes what it holds for the repository. They are never
// logged.
type Credentials struct {
	Host    string    `json:"host"`
	Repo    string    `json:"repo"`
	User    string    `json:"user,omitempty"`
	Secret  string    `json:"secret,omitempty"`
	Expires time.Time `json:"expires"`
}

// CredentialKeeper is a FileSystem that takes Credentials for its reads.
type CredentialKeeper interface {
	SetCredentials(c Credentials)
}

// Info says which data plane answers.
type Info struct {
	// Version is the lazypulld version it was built as (main.version).
	Version string `json:"version"`
	// Build identifies the binary: two builds differ in Build even when
	// their Version is the same.
	Build string `json:"build"`
	// PID is the data plane's process id, in its own PID namespace.
	PID int `json:"pid"`
}

// Runtime is what a data plane's Go runtime says of the process: how many
// goroutines it runs and what memory it holds. A node's operator watches it
// to see what the mounted layers cost; tests use it to check that removing
// layers gives back what mounting them took.
type Runtime struct {
	Goroutines int `json:"goroutines"`
	// HeapAlloc is the bytes of allocated heap objects: the live ones and,
	// unless the call collected garbage first, garbage not yet collected.
	HeapAlloc uint64 `json:"heap_alloc"`
	// HeapInuse is the bytes of the heap's spans that hold objects.
	HeapInuse uint64 `json:"heap_inuse"`
	// HeapObjects is the number of allocated heap objects.
	HeapObjects uint64 `json:"heap_objects"`
	// Sys is the memory the Go runtime has obtained from the system, some
	// of which it may have returned (HeapReleased).
	Sys          uint64 `json:"sys"`
	HeapReleased uint64 `json:"heap_released"`
	// NumGC counts the completed garbage collections.
	NumGC uint32 `json:"num_gc"`
}

// Mount is a layer a data plane serves.
type Mount struct {
	Mountpoint string            `json:"mountpoint"`
	Labels     map[string]string `json:"labels"`
}

// MountList is the answer of /v1/mounts.
type MountList struct {
	Mounts []Mount `json:"mounts"`
}

// MountRequest is the body of /v1/mount and /v1/check.
type MountRequest struct {
	Mountpoint string            `json:"mountpoint"`
	Labels     map[string]string `json:"labels"`
}

// MountAnswer is the answer of a /v1/mount that succeeded, from a data
// plane whose FileSystem verifies layers (a Verifier); others answer 204
// No Content.
type MountAnswer struct {
	// Verification is the state of the layer just mounted: already
	// verified or failed if that was known (a layer verified before, or
	// verified by the Mount itself), else pending.
	Verification *Verification `json:"verification,omitempty"`
}

// UnmountRequest is the body of /v1/unmount.
type UnmountRequest struct {
	Mountpoint string `json:"mountpoint"`
}

// ShutdownRequest is the body of /v1/shutdown.
type ShutdownRequest struct {
	// Unmount asks the data plane to unmount every layer it serves and
	// stop. Without it the data plane stops only if it serves no layer
	// (a drain): otherwise the call fails with FailedPrecondition and the
	// data plane keeps serving.
	Unmount bool `json:"unmount"`
}

// States of a layer's verification (Verification.State).
const (
	VerificationPending  = "pending"
	VerificationVerified = "verified"
	VerificationFailed   = "failed"
)

// Verification is where the check of a layer a data plane serves against
// the DiffID its chain ID implies stands (fs.Verification).
type Verification struct {
	Mountpoint string `json:"mountpoint"`
	// Layer is the layer (blob) digest.
	Layer string `json:"layer"`
	// ChainID is the chain ID the layer was mounted for.
	ChainID string `json:"chainID,omitempty"`
	// State is VerificationPending, VerificationVerified or
	// VerificationFailed.
	State string `json:"state"`
	// Reason says why the layer failed.
	Reason string `json:"reason,omitempty"`
	// DiffID is the digest of the layer's tar, once known.
	DiffID string `json:"diffID,omitempty"`
	// Mounted is when the layer was mounted; Decided, when its state
	// became verified or failed.
	Mounted time.Time `json:"mounted"`
	Decided time.Time `json:"decided,omitzero"`
}

// VerificationList is the answer of
//
//	GET /v1/verifications?since=<generation>[&wait=<duration>]
//
// the verification state of every layer the data plane serves, once its
// Generation is past since: the data plane answers as soon as it is, or,
// if nothing changes, after wait (at most MaxPollWait, the default) with
// Generation equal to since and no Verifications. A caller passes the
// Generation it got last to wait for the next change; since=0 (or none)
// answers at once.
type VerificationList struct {
	Generation    uint64         `json:"generation"`
	Verifications []Verification `json:"verifications"`
}

// MaxPollWait bounds how long a data plane holds a call to
// /v1/verifications before it answers that nothing changed.
const MaxPollWait = 30 * time.Second

// Error is the body of a failed call.
type Error struct {
	// Message is the error's text, as the data plane would log it.
	Message string `json:"error"`
	// Class is the errdefs class ("not found", "data loss", ...), or ""
	// for an error of no class.
	Class string `json:"class,omitempty"`
}

// class is an errdefs class as it crosses the wire.
type class struct {
	name     string // the sentinel's text, the name on the wire
	is       func(error) bool
	sentinel error
	status   int
}

// classes in the order they are tested: every error matches at most one
// of errdefs' classes, but context's errors also match Canceled and
// DeadlineExceeded, so those come as themselves.
var classes = []class{
	{"context canceled", isContext(context.Canceled), context.Canceled, 499},
	{"context deadline exceeded", isContext(context.DeadlineExceeded), context.DeadlineExceeded, http.StatusGatewayTimeout},
	{"invalid argument", errdefs.IsInvalidArgument, errdefs.ErrInvalidArgument, http.StatusBadRequest},
	{"not found", errdefs.IsNotFound, errdefs.ErrNotFound, http.StatusNotFound},
	{"already exists", errdefs.IsAlreadyExists, errdefs.ErrAlreadyExists, http.StatusConflict},
	{"permission denied", errdefs.IsPermissionDenied, errdefs.ErrPermissionDenied, http.StatusForbidden},
	{"resource exhausted", errdefs.IsResourceExhausted, errdefs.ErrResourceExhausted, http.StatusTooManyRequests},
	{"failed precondition", errdefs.IsFailedPrecondition, errdefs.ErrFailedPrecondition, http.StatusPreconditionFailed},
	{"conflict", errdefs.IsConflict, errdefs.ErrConflict, http.StatusConflict},
	{"not modified", errdefs.IsNotModified, errdefs.ErrNotModified, http.StatusConflict},
	{"aborted", errdefs.IsAborted, errdefs.ErrAborted, http.StatusConflict},
	{"out of range", errdefs.IsOutOfRange, errdefs.ErrOutOfRange, http.StatusRequestedRangeNotSatisfiable},
	{"not implemented", errdefs.IsNotImplemented, errdefs.ErrNotImplemented, http.StatusNotImplemented},
	{"internal", errdefs.IsInternal, errdefs.ErrInternal, http.StatusInternalServerError},
	{"unavailable", errdefs.IsUnavailable, errdefs.ErrUnavailable, http.StatusServiceUnavailable},
	{"data loss", errdefs.IsDataLoss, errdefs.ErrDataLoss, http.StatusInternalServerError},
	{"unauthenticated", errdefs.IsUnauthorized, errdefs.ErrUnauthenticated, http.StatusUnauthorized},
	{"unknown", errdefs.IsUnknown, errdefs.ErrUnknown, http.StatusInternalServerError},
}

func isContext(target error) func(error) bool {
	return func(err error) bool { return errors.Is(err, target) }
}

// encodeError returns the status and body that carry err.
func encodeError(err error) (int, Error) {
	for _, c := range classes {
		if c.is(err) {
			return c.status, Error{Message: err.Error(), Class: c.name}
		}
	}
	return http.StatusInternalServerError, Error{Message: err.Error()}
}

// remoteError is an error a data plane answered with: its text is the data
// plane's, and it matches the class it was sent with.
type remoteError struct {
	msg   string
	class error // nil for an error of no class
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.class }

// decodeError returns the error that body e carries.
func decodeError(e Error) error {
	for _, c := range classes {
		if c.name == e.Class {
			return &remoteError{msg: e.Message, class: c.sentinel}
		}
	}
	return &remoteError{msg: e.Message}
}
