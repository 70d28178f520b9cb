package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// The behaviour of every request is built from small http.RoundTrippers,
// outermost first: auth (per registry host), user agent, retry, timeout
// and stall, the Observer's counting,
// then the transport that containerd's hosts.toml support configured (TLS,
// dial timeout, plain HTTP). Token requests of the authorizer use the same
// stack minus auth, so they get the timeout and retries too.

// wrapTransport installs the user agent, retry and timeout layers.
func (o *options) wrapTransport(base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	var rt http.RoundTripper = &observeTransport{inner: base, obs: o.observer}
	rt = &timeoutTransport{inner: rt, timeout: o.timeout, stall: o.stall, obs: o.observer}
	rt = &retryTransport{inner: rt, retries: o.retries, base: o.backoffBase, max: o.backoffMax, obs: o.observer}
	return &userAgentTransport{inner: rt, ua: o.userAgent}
}

type userAgentTransport struct {
	inner http.RoundTripper
	ua    string
}

func (t *userAgentTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.ua == "" || req.Header.Get("User-Agent") != "" {
		return t.inner.RoundTrip(req)
	}
	r := req.Clone(req.Context())
	r.Header.Set("User-Agent", t.ua)
	return t.inner.RoundTrip(r)
}

// timeoutTransport bounds the wait for a response's headers by timeout,
// then each wait for bytes of its body by stall: a body that brings no byte
// for that long is cut off (errStalled), however long the whole body takes,
// so that a large answer on a slow link is not mistaken for a stalled one.
// Time the caller spends between two reads of the body does not count.
// Closing the body releases the timers.
type timeoutTransport struct {
	inner   http.RoundTripper
	timeout time.Duration
	stall   time.Duration
	obs     Observer
}

func (t *timeoutTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancelCause(req.Context())
	timer := time.AfterFunc(t.timeout, func() { cancel(errRequestTimeout) })
	resp, err := t.inner.RoundTrip(req.WithContext(ctx))
	timer.Stop()
	if err != nil {
		err = timeoutCause(ctx, err)
		cancel(nil)
		return nil, err
	}
	host := req.URL.Host
	resp.Body = newStallBody(resp.Body, ctx, cancel, t.stall, func() { t.obs.Stalled(host) })
	return resp, nil
}

// timeoutCause returns our own timeout or stall error in place of err when
// that is why the request failed (the transport itself only says that the
// request's context was canceled), and err otherwise.
func timeoutCause(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if cause := context.Cause(ctx); errors.Is(cause, errRequestTimeout) || errors.Is(cause, errStalled) {
		return cause
	}
	return err
}

// stallBody cuts its response off when a read waits stall for a byte.
type stallBody struct {
	io.ReadCloser
	ctx    context.Context
	cancel context.CancelCauseFunc
	stall  time.Duration
	timer  *time.Timer // armed only while a Read waits
}

// newStallBody returns body cut off after stall without a byte; stalled
// is called when it is.
func newStallBody(body io.ReadCloser, ctx context.Context, cancel context.CancelCauseFunc, stall time.Duration, stalled func()) *stallBody {
	b := &stallBody{ReadCloser: body, ctx: ctx, cancel: cancel, stall: stall}
	cause := fmt.Errorf("%w: no bytes for %v", errStalled, stall)
	b.timer = time.AfterFunc(stall, func() {
		stalled() // first: once the reader sees the stall, it is counted
		cancel(cause)
	})
	b.timer.Stop()
	return b
}

func (b *stallBody) Read(p []byte) (int, error) {
	b.timer.Reset(b.stall)
	n, err := b.ReadCloser.Read(p)
	b.timer.Stop()
	if err != nil && err != io.EOF {
		err = timeoutCause(b.ctx, err)
	}
	return n, err
}

func (b *stallBody) Close() error {
	b.timer.Stop()
	err := b.ReadCloser.Close()
	b.cancel(nil)
	return err
}

type noRetryKey struct{}

// withoutRetries makes requests on ctx single attempts: used for a host
// that is not the last one to try, so that failing over is fast.
func withoutRetries(ctx context.Context) context.Context {
	return context.WithValue(ctx, noRetryKey{}, true)
}

// retryTransport retries temporary failures (network errors, 408, 429,
// 5xx) with exponential backoff and full jitter, honouring Retry-After up
// to the maximum backoff.
type retryTransport struct {
	inner     http.RoundTripper
	retries   int
	base, max time.Duration
	obs       Observer
}

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	retries := t.retries
	if ctx.Value(noRetryKey{}) != nil {
		retries = 0
	}
	for attempt := 0; ; attempt++ {
		resp, err := t.inner.RoundTrip(req)
		if attempt >= retries || ctx.Err() != nil || !retryable(resp, err) || req.Body != nil {
			return resp, err
		}
		wait := retryDelay(t.base, t.max, attempt, resp)
		fields := log.Fields{"host": req.URL.Host, "attempt": attempt + 1, "wait": wait}
		if resp != nil {
			fields["status"] = resp.StatusCode
			drain(resp.Body)
		}
		log.G(ctx).WithFields(fields).WithError(redact(err)).Debug("temporary failure, retrying")
		if err := sleep(ctx, wait); err != nil {
			return nil, err
		}
		t.obs.Retried(req.URL.Host)
	}
}

func retryable(resp *http.Response, err error) bool {
	if err != nil {
		return temporaryNetError(err)
	}
	return classifyStatus(resp.StatusCode).temporary
}

// retryDelay is how long to wait before attempt+1: exponential backoff
// from base up to max with full jitter, or what the answer's Retry-After
// asks for, up to max.
func retryDelay(base, max time.Duration, attempt int, resp *http.Response) time.Duration {
	if resp != nil {
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
			return min(time.Duration(s)*time.Second, max)
		}
	}
	d := max
	if attempt < 30 {
		d = min(base<<attempt, max)
	}
	return d/2 + rand.N(d/2+1)
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}

// drain reads a little of an unwanted body so the connection can be reused,
// then closes it.
func drain(body io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(body, 4<<10))
	_ = body.Close()
}

// authTransport authorizes requests with containerd's docker authorizer
// (bearer tokens and basic auth, credentials from the resolver's
// credentials function) and, on a 401 with a challenge it understands,
// tries once more with the new authorization.
//
// A 401 to a request that carried a bearer token means the token is no
// longer good (it expired, or was revoked, before the expiry the token
// server gave): the authorizer is told so, which makes it forget the
// token and fetch a new one with fresh credentials. Registries say it
// with error="invalid_token" in the challenge (the distribution registry
// does); those that do not would otherwise get the stale token again.
type authTransport struct {
	inner http.RoundTripper
	auth  docker.Authorizer

	// mu serializes Authorize among the hosts of a registry, which share
	// an authorizer: containerd's (v2.4.2, doBearerAuth) records a new
	// token's expiry outside its lock, a data race with any concurrent
	// Authorize of the same scope. Callers of the same scope wait for
	// that token fetch anyway; with a cached token, Authorize takes no
	// time.
	mu *sync.Mutex
}

func (t *authTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	resp, err := t.try(req)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	if err := t.auth.AddResponses(ctx, []*http.Response{staleToken(resp)}); err != nil {
		if !errdefs.IsNotImplemented(err) {
			log.G(ctx).WithError(redact(err)).WithField("host", req.URL.Host).Warn("cannot answer the authentication challenge")
		}
		return resp, nil // the 401 speaks for itself
	}
	drain(resp.Body)
	return t.try(req)
}

func (t *authTransport) try(req *http.Request) (*http.Response, error) {
	r := req.Clone(req.Context())
	t.mu.Lock()
	err := t.auth.Authorize(req.Context(), r)
	t.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("authorize: %w", err)
	}
	return t.inner.RoundTrip(r)
}

// staleToken returns resp, a 401, as the authorizer should see it: when
// the request carried a bearer token, with every bearer challenge saying
// error="invalid_token" (unless it gives an error of its own).
func staleToken(resp *http.Response) *http.Response {
	if resp.Request == nil || !strings.HasPrefix(resp.Request.Header.Get("Authorization"), "Bearer ") {
		return resp
	}
	values := resp.Header.Values("WWW-Authenticate")
	marked := make([]string, len(values))
	changed := false
	for i, v := range values {
		marked[i] = v
		scheme, params, _ := strings.Cut(strings.TrimSpace(v), " ")
		if strings.EqualFold(scheme, "bearer") && !strings.Contains(strings.ToLower(params), "error=") {
			marked[i] = v + `,error="invalid_token"`
			changed = true
		}
	}
	if !changed {
		return resp
	}
	c := *resp
	c.Header = resp.Header.Clone()
	c.Header["Www-Authenticate"] = marked
	return &c
}
