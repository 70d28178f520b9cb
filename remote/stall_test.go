package remote

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// stallOnce makes reg answer its next n range requests (not the suffix
// requests of Open... unless suffix is set) with the right headers and the
// first half of the body, then nothing until the client gives up; later
// requests are answered in full.
func stallOnce(t *testing.T, reg *registry, n int32, suffix bool) {
	var left atomic.Int32
	left.Store(n)
	serve := reg.serve
	reg.serve = func(w http.ResponseWriter, r *http.Request) {
		rng := r.Header.Get("Range")
		if strings.HasPrefix(rng, "bytes=-") != suffix || left.Add(-1) < 0 {
			serve(w, r)
			return
		}
		size := int64(len(reg.blob))
		start, end, _ := firstRange(rng, size)
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, size))
		w.Header().Set("Content-Length", strconv.FormatInt(end-start+1, 10))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(reg.blob[start : start+(end-start+1)/2])
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-time.After(time.Minute):
			t.Error("the client did not give up a stalled answer in a minute")
		}
	}
}

// A stalled answer is given up after the stall timeout and asked again:
// a reader told of progress gets the rest of its bytes, others their
// range again; Open gets its tail.
func TestStalledAnswerIsAskedAgain(t *testing.T) {
	const stall = time.Second
	t.Run("progress", func(t *testing.T) {
		reg := newRegistry(t, 100_000)
		b, _ := mustOpen(t, newTestResolver(t, reg, WithStallTimeout(stall)), reg, 10)
		stallOnce(t, reg, 1, false)
		p := make([]byte, 10_000)
		last := 0
		n, err := b.ReadAtProgress(context.Background(), p, 1000, func(n int) {
			if n <= last || !bytes.Equal(p[:n], reg.blob[1000:1000+n]) {
				t.Errorf("progress(%d) after %d: not growing, or not the blob's bytes", n, last)
			}
			last = n
		})
		if err != nil || n != len(p) || !bytes.Equal(p, reg.blob[1000:11_000]) {
			t.Fatalf("ReadAtProgress = %d, %v", n, err)
		}
		if got, want := strings.Join(reg.requests()[1:], " "), "bytes=1000-10999 bytes=6000-10999"; got != want {
			t.Errorf("requests %s, want %s: the rest after the half that came", got, want)
		}
	})
	t.Run("no progress", func(t *testing.T) {
		reg := newRegistry(t, 100_000)
		b, _ := mustOpen(t, newTestResolver(t, reg, WithStallTimeout(stall)), reg, 10)
		stallOnce(t, reg, 1, false)
		p := make([]byte, 1000)
		if n, err := b.ReadAt(context.Background(), p, 100); err != nil || n != len(p) || !bytes.Equal(p, reg.blob[100:1100]) {
			t.Fatalf("ReadAt = %d, %v", n, err)
		}
		if got, want := strings.Join(reg.requests()[1:], " "), "bytes=100-1099 bytes=100-1099"; got != want {
			t.Errorf("requests %s, want %s: the stalled one and its retry", got, want)
		}
	})
	t.Run("open", func(t *testing.T) {
		reg := newRegistry(t, 100_000)
		stallOnce(t, reg, 1, true)
		_, tail := mustOpen(t, newTestResolver(t, reg, WithStallTimeout(stall)), reg, 51)
		if !bytes.Equal(tail, reg.blob[len(reg.blob)-51:]) {
			t.Error("wrong tail")
		}
		if n := len(reg.requests()); n != 2 {
			t.Errorf("%d requests, want 2", n)
		}
	})
	t.Run("stalls beyond the retries", func(t *testing.T) {
		reg := newRegistry(t, 100_000)
		b, _ := mustOpen(t, newTestResolver(t, reg, WithStallTimeout(stall), WithRetries(2)), reg, 10)
		stallOnce(t, reg, 3, false)
		_, err := b.ReadAt(context.Background(), make([]byte, 1000), 0)
		if !IsTemporary(err) || !strings.Contains(err.Error(), "response stalled: no bytes for 1s") {
			t.Errorf("ReadAt: %v, want a temporary error saying the answer stalled", err)
		}
		if n := len(reg.requests()); n != 4 {
			t.Errorf("%d requests, want 4: the open and three tries", n)
		}
	})
}

// A body that keeps bringing bytes is not cut off, however long it takes
// in all: the stall timeout bounds the waits for bytes, not the transfer,
// and the request timeout only the wait for the headers.
func TestSlowBodyIsNotAStall(t *testing.T) {
	reg := newRegistry(t, 100_000)
	// Timeouts of 2s, which a busy machine that runs the server a moment
	// late does not reach, and a body that takes longer in all.
	const timeout = 2 * time.Second
	b, _ := mustOpen(t, newTestResolver(t, reg, WithStallTimeout(timeout), WithRequestTimeout(timeout)), reg, 10)
	const pieces = 150 // 20ms apart: 3s or more in all, each wait 100 times shorter than the stall timeout
	reg.serve = func(w http.ResponseWriter, r *http.Request) {
		start, end, _ := firstRange(r.Header.Get("Range"), int64(len(reg.blob)))
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, len(reg.blob)))
		w.Header().Set("Content-Length", strconv.FormatInt(end-start+1, 10))
		w.WriteHeader(http.StatusPartialContent)
		body := reg.blob[start : end+1]
		step := (len(body) + pieces - 1) / pieces
		for i := 0; i < len(body); i += step {
			w.Write(body[i:min(i+step, len(body))])
			w.(http.Flusher).Flush()
			time.Sleep(20 * time.Millisecond)
		}
	}
	start := time.Now()
	p := make([]byte, 30_000)
	if _, err := b.ReadAt(context.Background(), p, 5000); err != nil || !bytes.Equal(p, reg.blob[5000:35_000]) {
		t.Fatalf("ReadAt: %v", err)
	}
	if d := time.Since(start); d < pieces*20*time.Millisecond {
		t.Fatalf("the body took %v, less than the %v the test needs", d, pieces*20*time.Millisecond)
	}
	if n := len(reg.requests()); n != 2 {
		t.Errorf("%d requests, want 2: the open and one read", n)
	}
}
