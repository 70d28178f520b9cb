package testbed

import (
	"errors"
	"fmt"
	"io"
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
// serves wrong data. Image references through it use Front.Host.
type Front struct {
	// Host is "127.0.0.1:<port>".
	Host string

	served atomic.Int64 // response body bytes passed on
	down   atomic.Bool  // answer every request with 503

	mu      sync.Mutex
	corrupt map[digest.Digest][]int64 // blob offsets to flip
	flipped int                       // bytes flipped so far
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
	f := &Front{Host: l.Addr().String(), corrupt: map[digest.Digest][]int64{}}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			// The registry builds absolute URLs (upload locations) from
			// the Host header; keep them pointing at the front.
			r.Out.Host = r.In.Host
		},
		ModifyResponse: f.modify,
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f.down.Load() {
			http.Error(w, "registry front is down", http.StatusServiceUnavailable)
			return
		}
		proxy.ServeHTTP(w, r)
	})
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
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

// SetDown makes the front answer every request with 503 Service
// Unavailable (down) or pass requests on again: a registry that is down.
func (f *Front) SetDown(down bool) { f.down.Store(down) }

// Ref returns the image reference "<front host>/<repoTag>".
func (f *Front) Ref(repoTag string) string { return f.Host + "/" + repoTag }

// BytesServed returns how many response body bytes the front has passed on
// to its clients so far.
func (f *Front) BytesServed() int64 { return f.served.Load() }

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

var blobPath = regexp.MustCompile(`^/v2/.+/blobs/(sha256:[0-9a-f]{64})$`)

func (f *Front) modify(resp *http.Response) error {
	body := &frontBody{rc: resp.Body, f: f}
	resp.Body = body
	if resp.Request.Method != http.MethodGet {
		return nil
	}
	m := blobPath.FindStringSubmatch(resp.Request.URL.Path)
	if m == nil {
		return nil
	}
	f.mu.Lock()
	offs := f.corrupt[digest.Digest(m[1])]
	f.mu.Unlock()
	if len(offs) == 0 {
		return nil
	}
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
	body.flip = offs
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
// offsets flip; start is the blob offset of the body's first byte.
type frontBody struct {
	rc    io.ReadCloser
	f     *Front
	start int64
	pos   int64 // bytes read so far
	flip  []int64
}

func (b *frontBody) Read(p []byte) (int, error) {
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
