package testbed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// Front is an HTTP reverse proxy on 127.0.0.1 in front of a registry. It
// counts the response body bytes it passes on, and it can corrupt chosen
// bytes of blobs, which lets a test play a registry (or a network path) that
// serves wrong data, hold back the requests for the start of a blob, and
// play the other faults of faults.go. Image references through it use
// Front.Host.
type Front struct {
	// Host is "127.0.0.1:<port>".
	Host string

	proxy  *httputil.ReverseProxy
	served atomic.Int64 // response body bytes passed on

	mu      sync.Mutex
	corrupt map[digest.Digest][]int64 // blob offsets to flip
	flipped int                       // bytes flipped so far
	faults  faults
	holds   map[digest.Digest]*hold
}

// hold holds back requests for the first byte of a blob until released.
type hold struct {
	released chan struct{}
	held     int // requests held so far
}

// StartFront starts a Front for t in front of the registry at backend
// ("host:port", plain HTTP) and stops it at cleanup.
func StartFront(t T, backend string) *Front {
	t.Helper()
	target, err := url.Parse("http://" + backend)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &Front{Host: l.Addr().String(), corrupt: map[digest.Digest][]int64{}, holds: map[digest.Digest]*hold{}}
	f.proxy = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			// The registry builds absolute URLs (upload locations) from
			// the Host header; keep them pointing at the front.
			r.Out.Host = r.In.Host
			f.mu.Lock()
			ignore := f.faults.ignoreRange
			f.mu.Unlock()
			if ignore && blobPath.MatchString(r.Out.URL.Path) {
				r.Out.Header.Del("Range")
			}
		},
		ModifyResponse: f.modify,
		ErrorLog:       log.New(io.Discard, "", 0), // clients going away mid-body
		FlushInterval:  -1,                         // what is read is on the wire, as a stall wants
	}
	srv := &http.Server{Handler: f, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("stop registry front: %v", err)
		}
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("registry front: %v", err)
		}
	})
	return f
}

// Ref returns the image reference "<front host>/<repoTag>".
func (f *Front) Ref(repoTag string) string { return f.Host + "/" + repoTag }

// BytesServed returns how many response body bytes the front has passed on
// to its clients so far.
func (f *Front) BytesServed() int64 { return f.served.Load() }

// Uncorrupt makes the front stop corrupting blob dgst.
func (f *Front) Uncorrupt(dgst digest.Digest) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.corrupt, dgst)
}

// CorruptBlob makes the front flip every bit of the byte at offset off of
// blob dgst in every response that carries that byte (a whole blob, or a
// range covering it), from now on.
func (f *Front) CorruptBlob(dgst digest.Digest, off int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.corrupt[dgst] = append(f.corrupt[dgst], off)
}

// Flipped returns how many corrupted bytes the front has served.
func (f *Front) Flipped() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.flipped
}

// HoldBlob makes the front hold back, from now until release is called,
// every GET of blob dgst that asks for its first byte: the whole blob, or a
// range that starts at offset 0 (not a suffix range "bytes=-N", which is
// how a blob's tail is asked for). Held requests go on once released.
func (f *Front) HoldBlob(dgst digest.Digest) (release func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	h := &hold{released: make(chan struct{})}
	f.holds[dgst] = h
	var once sync.Once
	return func() {
		once.Do(func() {
			f.mu.Lock()
			delete(f.holds, dgst)
			f.mu.Unlock()
			close(h.released)
		})
	}
}

// Held returns how many requests for blob dgst its current hold has held.
func (f *Front) Held(dgst digest.Digest) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if h := f.holds[dgst]; h != nil {
		return h.held
	}
	return 0
}

// wait holds r back if a hold applies to it; false means r was cancelled.
func (f *Front) wait(r *http.Request) bool {
	m := blobPath.FindStringSubmatch(r.URL.Path)
	if r.Method != http.MethodGet || m == nil {
		return true
	}
	if rng := r.Header.Get("Range"); rng != "" && !strings.HasPrefix(rng, "bytes=0-") {
		return true
	}
	f.mu.Lock()
	h := f.holds[digest.Digest(m[1])]
	if h != nil {
		h.held++
	}
	f.mu.Unlock()
	if h == nil {
		return true
	}
	select {
	case <-h.released:
		return true
	case <-r.Context().Done():
		return false
	}
}

var blobPath = regexp.MustCompile(`^/v2/.+/blobs/(sha256:[0-9a-f]{64})$`)

func (f *Front) modify(resp *http.Response) error {
	body := &frontBody{rc: resp.Body, f: f, ctx: resp.Request.Context()}
	resp.Body = body
	if resp.Request.Method != http.MethodGet {
		return nil
	}
	m := blobPath.FindStringSubmatch(resp.Request.URL.Path)
	if m == nil {
		return nil
	}
	dgst := digest.Digest(m[1])
	switch resp.StatusCode {
	case http.StatusOK:
		body.start = 0
	case http.StatusPartialContent:
		start, err := contentRangeStart(resp.Header.Get("Content-Range"))
		if err != nil {
			return err // a multipart answer: not something this front rewrites
		}
		body.start = start
	default:
		return nil
	}
	end := int64(1<<63 - 1)
	if resp.ContentLength >= 0 {
		end = body.start + resp.ContentLength
	}
	body.stall = f.takeStall(dgst, body.start, end)
	f.mu.Lock()
	body.flip = f.corrupt[dgst]
	f.mu.Unlock()
	return nil
}

// contentRangeStart parses the first offset of "bytes a-b/size".
func contentRangeStart(v string) (int64, error) {
	rest, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return 0, fmt.Errorf("front: cannot rewrite a response with Content-Range %q", v)
	}
	a, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, fmt.Errorf("front: cannot rewrite a response with Content-Range %q", v)
	}
	return strconv.ParseInt(a, 10, 64)
}

// frontBody counts what is read through it and flips the bytes at the blob
// offsets flip; start is the blob offset of the body's first byte. With a
// stall, it holds back the bytes from the stall's offset for its duration.
type frontBody struct {
	rc    io.ReadCloser
	f     *Front
	ctx   context.Context // the request's: ends when the client goes away
	start int64
	pos   int64 // bytes read so far
	flip  []int64
	stall *stallRule
}

func (b *frontBody) Read(p []byte) (int, error) {
	if s := b.stall; s != nil {
		at := s.off - b.start - b.pos // bytes before the stall
		if at == 0 {
			b.stall = nil
			t := time.NewTimer(s.d)
			defer t.Stop()
			select {
			case <-t.C:
			case <-b.ctx.Done():
				return 0, b.ctx.Err()
			}
		} else if int64(len(p)) > at {
			p = p[:at]
		}
	}
	n, err := b.rc.Read(p)
	for _, off := range b.flip {
		if i := off - b.start - b.pos; i >= 0 && i < int64(n) {
			p[i] ^= 0xff
			b.f.mu.Lock()
			b.f.flipped++
			b.f.mu.Unlock()
		}
	}
	b.pos += int64(n)
	b.f.served.Add(int64(n))
	return n, err
}

func (b *frontBody) Close() error { return b.rc.Close() }
