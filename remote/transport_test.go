package remote

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptrace"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func TestRetryTemporaryFailures(t *testing.T) {
	for _, tc := range []struct {
		name     string
		status   int
		failures int32
		retries  int
		wantReqs int
		ok       bool
	}{
		{"503 then success", http.StatusServiceUnavailable, 2, 3, 3, true},
		{"429 then success", http.StatusTooManyRequests, 1, 3, 2, true},
		{"503 beyond the retries", http.StatusServiceUnavailable, 10, 2, 3, false},
		{"404 is not retried", http.StatusNotFound, 10, 3, 1, false},
		{"403 is not retried", http.StatusForbidden, 10, 3, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := newRegistry(t, 1000)
			var fails atomic.Int32
			fails.Store(tc.failures)
			reg.serve = func(w http.ResponseWriter, r *http.Request) {
				if fails.Add(-1) >= 0 {
					w.Header().Set("Retry-After", "0")
					http.Error(w, "no", tc.status)
					return
				}
				reg.serveContent(w, r)
			}
			_, tail, err := newTestResolver(t, reg, WithRetries(tc.retries)).Open(context.Background(), reg.ref(), reg.dgst, 10)
			if n := len(reg.requests()); n != tc.wantReqs {
				t.Errorf("%d requests, want %d", n, tc.wantReqs)
			}
			if tc.ok {
				if err != nil || !bytes.Equal(tail, reg.blob[990:]) {
					t.Fatalf("Open: %v", err)
				}
				return
			}
			c := classifyStatus(tc.status)
			if !errors.Is(err, c.class) || IsTemporary(err) != c.temporary {
				t.Errorf("Open: %v; want class %v, temporary %v", err, c.class, c.temporary)
			}
			var e *Error
			if !errors.As(err, &e) || e.Status != tc.status || e.Host != reg.host() || e.Digest != reg.dgst || e.Ref != reg.ref() {
				t.Errorf("error does not name status, host, digest and ref: %#v", e)
			}
		})
	}
}

func TestBackoffDelay(t *testing.T) {
	base, maxDelay := 100*time.Millisecond, time.Second
	for attempt, want := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		want *= time.Millisecond
		if attempt == 5 {
			attempt = 100 // no overflow
		}
		for range 20 {
			if d := retryDelay(base, maxDelay, attempt, nil); d < want/2 || d > want {
				t.Fatalf("attempt %d: delay %v not in [%v, %v]", attempt, d, want/2, want)
			}
		}
	}
	resp := &http.Response{Header: http.Header{"Retry-After": {"60"}}}
	if d := retryDelay(base, maxDelay, 0, resp); d != time.Second {
		t.Errorf("Retry-After 60 with a 1s cap: %v", d)
	}
}

// hang makes reg stop answering until the test ends; with headers, it sends
// the headers and part of the body first.
func hang(t *testing.T, reg *registry, headers bool) {
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	reg.serve = func(w http.ResponseWriter, r *http.Request) {
		if headers {
			w.Header().Set("Content-Range", "bytes 0-999/1000")
			w.Header().Set("Content-Length", "1000")
			w.WriteHeader(http.StatusPartialContent)
			w.Write(reg.blob[:10])
			w.(http.Flusher).Flush()
		}
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}
}

func TestRequestTimeout(t *testing.T) {
	baseline := runtime.NumGoroutine()
	t.Run("no answer", func(t *testing.T) {
		reg := newRegistry(t, 1000)
		hang(t, reg, false)
		start := time.Now()
		ctx, attempts := countAttempts()
		_, _, err := newTestResolver(t, reg, WithRequestTimeout(100*time.Millisecond), WithRetries(1)).
			Open(ctx, reg.ref(), reg.dgst, 10)
		if !IsTemporary(err) || !errdefs.IsUnavailable(err) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Open of a hanging server: %v", err)
		}
		if n := attempts(); n != 2 {
			t.Errorf("%d attempts, want 2 (one retry)", n)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("took %v", d)
		}
	})
	t.Run("stalled body", func(t *testing.T) {
		reg := newRegistry(t, 1000)
		b, _ := mustOpen(t, newTestResolver(t, reg, WithStallTimeout(200*time.Millisecond), WithRetries(1)), reg, 10)
		hang(t, reg, true)
		start := time.Now()
		if n, err := b.ReadAt(context.Background(), make([]byte, 1000), 0); n != 0 || !IsTemporary(err) || !errors.Is(err, errStalled) {
			t.Errorf("ReadAt of a stalled body = %d, %v", n, err)
		}
		if n := len(reg.requests()); n != 3 {
			t.Errorf("%d requests, want 3 (the open, the read and one more)", n)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("took %v", d)
		}
	})
	t.Run("caller's context", func(t *testing.T) {
		reg := newRegistry(t, 1000)
		hang(t, reg, false)
		ctx, attempts := countAttempts()
		ctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, _, err := newTestResolver(t, reg).Open(ctx, reg.ref(), reg.dgst, 10)
		if !errors.Is(err, context.DeadlineExceeded) || IsTemporary(err) {
			t.Errorf("Open with an expiring context: %v", err)
		}
		if n := attempts(); n != 1 {
			t.Errorf("%d attempts, want 1", n)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("took %v", d)
		}
	})
	// Servers are closed and bodies released: no goroutine is left behind
	// (the ones that end do so at once, but a busy machine may run them
	// late).
	deadline := time.Now().Add(time.Minute)
	for runtime.NumGoroutine() > baseline && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > baseline {
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines, %d before:\n%s", n, baseline, buf[:runtime.Stack(buf, true)])
	}
}

// countAttempts returns a context whose requests count their attempts
// (each asks the transport for a connection), and the count so far. Unlike
// the server's count, it does not depend on a request getting there before
// its time is up.
func countAttempts() (context.Context, func() int) {
	var n atomic.Int32
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		GetConn: func(string) { n.Add(1) },
	})
	return ctx, func() int { return int(n.Load()) }
}
