package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"

	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
)

// Error is the error returned for every failure that involves a registry or
// a storage host. It names the image, the blob and the host, carries an
// errdefs class (so errdefs.IsNotFound(err) and friends work) and says
// whether trying again later may succeed.
type Error struct {
	Ref    string
	Digest digest.Digest
	Host   string
	// Request is the byte range that was asked for, as in a Range header.
	Request string
	// Status is the HTTP status of the answer, 0 if there was none.
	Status int

	class     error
	cause     error
	temporary bool
	broken    bool // the answer's body broke off part way
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("blob %s of %s", e.Digest, e.Ref)
	if e.Host != "" {
		msg += " from " + e.Host
	}
	if e.Request != "" {
		msg += " (" + e.Request + ")"
	}
	if e.Status != 0 {
		msg += fmt.Sprintf(": %d %s", e.Status, http.StatusText(e.Status))
	}
	if e.cause != nil {
		msg += ": " + redactText(e.cause.Error())
	}
	if e.class != nil {
		msg += ": " + e.class.Error()
	}
	return msg
}

// Unwrap returns the errdefs class and the underlying cause.
func (e *Error) Unwrap() []error {
	var errs []error
	if e.class != nil {
		errs = append(errs, e.class)
	}
	if e.cause != nil {
		errs = append(errs, e.cause)
	}
	return errs
}

// Temporary reports whether the same request may succeed if tried again later
// (network failures, timeouts, 408, 429 and 5xx answers, truncated bodies).
func (e *Error) Temporary() bool { return e.temporary }

// IsTemporary reports whether err, or an error it wraps, says it is temporary.
func IsTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

type statusClass struct {
	class     error
	temporary bool
}

// statusClasses is the one place where HTTP statuses become errdefs classes.
var statusClasses = map[int]statusClass{
	http.StatusBadRequest:                   {errdefs.ErrInvalidArgument, false},
	http.StatusUnauthorized:                 {errdefs.ErrPermissionDenied, false},
	http.StatusForbidden:                    {errdefs.ErrPermissionDenied, false},
	http.StatusNotFound:                     {errdefs.ErrNotFound, false},
	http.StatusMethodNotAllowed:             {errdefs.ErrNotImplemented, false},
	http.StatusRequestTimeout:               {errdefs.ErrUnavailable, true},
	http.StatusGone:                         {errdefs.ErrNotFound, false},
	http.StatusRequestedRangeNotSatisfiable: {errdefs.ErrOutOfRange, false},
	http.StatusTooManyRequests:              {errdefs.ErrUnavailable, true},
	http.StatusInternalServerError:          {errdefs.ErrUnavailable, true},
	http.StatusNotImplemented:               {errdefs.ErrNotImplemented, false},
	http.StatusBadGateway:                   {errdefs.ErrUnavailable, true},
	http.StatusServiceUnavailable:           {errdefs.ErrUnavailable, true},
	http.StatusGatewayTimeout:               {errdefs.ErrUnavailable, true},
}

func classifyStatus(status int) statusClass {
	if c, ok := statusClasses[status]; ok {
		return c
	}
	if status >= 500 {
		return statusClass{errdefs.ErrUnavailable, true}
	}
	return statusClass{errdefs.ErrUnknown, false}
}

// errRequestTimeout marks a request that ran out of its own time budget, as
// opposed to one whose caller's context ended.
// It wraps context.DeadlineExceeded.
var errRequestTimeout = fmt.Errorf("request timed out: %w", context.DeadlineExceeded)

// errStalled marks a response whose body brought no byte for the stall
// timeout.
var errStalled = errors.New("response stalled")

// temporaryNetError reports whether a transport error may go away on retry.
func temporaryNetError(err error) bool {
	switch {
	case err == nil, errors.Is(err, context.Canceled):
		return false
	case errors.Is(err, errRequestTimeout), errors.Is(err, errStalled):
		return true
	case errors.Is(err, context.DeadlineExceeded):
		return false // the caller's deadline, not ours
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var oe *net.OpError
	return errors.As(err, &oe)
}

// netError turns a transport failure into an Error. A canceled caller
// context is kept as is (errdefs.IsCanceled works on it).
func (b *Blob) netError(host, rng string, err error) error {
	redactChain(err)
	e := &Error{Ref: b.ref, Digest: b.dgst, Host: host, Request: rng, cause: err}
	var us remoteerrors.ErrUnexpectedStatus
	switch {
	case errors.Is(err, context.Canceled):
	case errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, errRequestTimeout):
	case errors.As(err, &us): // from the token server
		c := classifyStatus(us.StatusCode)
		e.class, e.temporary = c.class, c.temporary
	default:
		e.class = errdefs.ErrUnavailable
		e.temporary = temporaryNetError(err)
	}
	return e
}

// statusError turns a non-2xx answer into an Error.
func (b *Blob) statusError(host, rng string, status int) error {
	c := classifyStatus(status)
	return &Error{Ref: b.ref, Digest: b.dgst, Host: host, Request: rng, Status: status,
		class: c.class, temporary: c.temporary}
}

// closedError reports a read of a blob of a closed Resolver.
func (b *Blob) closedError() error {
	return &Error{Ref: b.ref, Digest: b.dgst, cause: errors.New("registry client closed"), class: errdefs.ErrUnavailable}
}

// contentError reports an answer whose bytes cannot be trusted or are
// incomplete.
func (b *Blob) contentError(host, rng string, class error, temporary bool, format string, args ...any) error {
	return &Error{Ref: b.ref, Digest: b.dgst, Host: host, Request: rng,
		cause: fmt.Errorf(format, args...), class: class, temporary: temporary}
}
