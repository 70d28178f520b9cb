package remote

import (
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/containerd/errdefs"
)

// Observer is told about the requests a Resolver sends, for metrics. Its
// methods are called concurrently, on the paths of reads: they must be
// quick and must not block. Hosts are host[:port] as in the requests'
// URLs: registries, mirrors, token servers and blob storage.
type Observer interface {
	// Request is told of each HTTP request sent (each attempt of a retried
	// one) once its answer's headers came or it failed: status is the
	// answer's, 0 for none; d is the time the headers took.
	Request(host string, status int, d time.Duration)
	// Received is told of the bytes of answers' bodies, as they arrive.
	Received(host string, n int)
	// Retried is told when a request is sent again after a temporary
	// failure, and when a read asks again for the rest of an answer that
	// broke off.
	Retried(host string)
	// Stalled is told when an answer brought no byte for the stall
	// timeout and was given up.
	Stalled(host string)
}

// WithObserver has o told about every request the Resolver sends.
func WithObserver(o Observer) Option {
	return func(opts *options) error {
		if o == nil {
			return fmt.Errorf("nil observer: %w", errdefs.ErrInvalidArgument)
		}
		opts.observer = o
		return nil
	}
}

// nopObserver is the Observer of a Resolver made without WithObserver.
type nopObserver struct{}

func (nopObserver) Request(string, int, time.Duration) {}
func (nopObserver) Received(string, int)               {}
func (nopObserver) Retried(string)                     {}
func (nopObserver) Stalled(string)                     {}

// observeTransport tells the Observer of each request and of the bytes of
// its answer; it is the innermost layer, so that every attempt counts.
type observeTransport struct {
	inner http.RoundTripper
	obs   Observer
}

func (t *observeTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := t.inner.RoundTrip(req)
	host := req.URL.Host
	if err != nil {
		t.obs.Request(host, 0, time.Since(start))
		return nil, err
	}
	t.obs.Request(host, resp.StatusCode, time.Since(start))
	resp.Body = &observedBody{ReadCloser: resp.Body, host: host, obs: t.obs}
	return resp, nil
}

type observedBody struct {
	io.ReadCloser
	host string
	obs  Observer
}

func (b *observedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.obs.Received(b.host, n)
	}
	return n, err
}
