package remote

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
)

func TestMain(m *testing.M) {
	// Keep the default keychain away from the host's docker config.
	dir, err := os.MkdirTemp("", "remote-test-docker")
	if err != nil {
		panic(err)
	}
	os.Setenv("DOCKER_CONFIG", dir)
	// Tests assert on state, not on log lines.
	_ = log.SetLevel("error")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const testRepo = "lib/img"

func testBlob(n int) ([]byte, digest.Digest) {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(uint64(n), 42))
	for i := range b {
		b[i] = byte(r.UintN(256))
	}
	return b, digest.FromBytes(b)
}

// registry is a fake registry serving one blob; serve decides how it
// answers a GET of the blob (default: net/http's ServeContent, which
// answers suffix and single range requests correctly).
type registry struct {
	blob  []byte
	dgst  digest.Digest
	serve func(w http.ResponseWriter, r *http.Request)
	srv   *httptest.Server

	mu      sync.Mutex
	ranges  []string // Range header of each blob request
	queries []string // query of each blob request
	other   int      // requests that were not blob GETs
	opened  int      // connections clients opened
	closed  int      // connections closed
}

func newRegistry(t *testing.T, size int) *registry {
	t.Helper()
	blob, dgst := testBlob(size)
	reg := &registry{blob: blob, dgst: dgst}
	reg.serve = reg.serveContent
	reg.srv = httptest.NewUnstartedServer(reg)
	reg.srv.Config.ConnState = reg.connState
	reg.srv.Start()
	t.Cleanup(reg.srv.Close)
	return reg
}

func (reg *registry) connState(_ net.Conn, s http.ConnState) {
	reg.mu.Lock()
	defer reg.mu.Unlock()
	switch s {
	case http.StateNew:
		reg.opened++
	case http.StateClosed, http.StateHijacked:
		reg.closed++
	}
}

// conns returns how many connections clients have opened to reg, and how
// many of them are closed.
func (reg *registry) conns() (opened, closed int) {
	reg.mu.Lock()
	defer reg.mu.Unlock()
	return reg.opened, reg.closed
}

func (reg *registry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet || r.URL.Path != "/v2/"+testRepo+"/blobs/"+reg.dgst.String() {
		reg.mu.Lock()
		reg.other++
		reg.mu.Unlock()
		http.NotFound(w, r)
		return
	}
	reg.mu.Lock()
	reg.ranges = append(reg.ranges, r.Header.Get("Range"))
	reg.queries = append(reg.queries, r.URL.RawQuery)
	reg.mu.Unlock()
	reg.serve(w, r)
}

func (reg *registry) serveContent(w http.ResponseWriter, r *http.Request) {
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(reg.blob))
}

// requests returns the Range headers of the blob requests so far.
func (reg *registry) requests() []string {
	reg.mu.Lock()
	defer reg.mu.Unlock()
	return append([]string(nil), reg.ranges...)
}

func (reg *registry) host() string { return hostOf(reg.srv.URL) }

func (reg *registry) ref() string { return reg.host() + "/" + testRepo + ":tag" }

// firstRange parses the first range of a Range header.
func firstRange(h string, size int64) (start, end int64, ok bool) {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok {
		return 0, 0, false
	}
	spec, _, _ = strings.Cut(spec, ",")
	a, b, ok := strings.Cut(spec, "-")
	if !ok {
		return 0, 0, false
	}
	if a == "" {
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil {
			return 0, 0, false
		}
		return max(0, size-n), size - 1, true
	}
	start, err1 := strconv.ParseInt(a, 10, 64)
	end, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return start, min(end, size-1), true
}

// serveFirstRange answers only the first range of any request, like
// go-containerregistry's registry and many CDNs.
func serveFirstRange(blob []byte, shift int64) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		size := int64(len(blob))
		start, end, ok := firstRange(r.Header.Get("Range"), size)
		if !ok {
			http.Error(w, "bad range", http.StatusRequestedRangeNotSatisfiable)
			return
		}
		start, end = start+shift, end+shift
		if end >= size {
			start, end = start-2*shift, end-2*shift
		}
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, size))
		w.Header().Set("Content-Length", strconv.FormatInt(end-start+1, 10))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(blob[start : end+1])
	}
}

// serveWhole ignores ranges.
func serveWhole(blob []byte) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
		w.WriteHeader(http.StatusOK)
		w.Write(blob)
	}
}

// hostsDir writes a hosts.toml for registry host and returns the root.
func hostsDir(t *testing.T, host, toml string) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, host)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

// fastBackoff keeps retry tests quick.
func fastBackoff(o *options) error {
	o.backoffBase, o.backoffMax = time.Millisecond, 10*time.Millisecond
	return nil
}

// newTestResolver returns a resolver that reaches reg over plain HTTP, as
// configured by a hosts.toml.
func newTestResolver(t *testing.T, reg *registry, opts ...Option) *Resolver {
	t.Helper()
	dir := hostsDir(t, reg.host(), fmt.Sprintf("server = %q\n", reg.srv.URL))
	// No warm-up unless a test asks: tests count requests. For the same
	// reason, timeouts that a busy machine does not reach: a request the
	// client retries because its answer seemed to stall (3s by default)
	// would count twice. Tests of timeouts set their own.
	opts = append([]Option{WithHostsDir(dir), fastBackoff, WithCredentials(noCredentials), WithWarmConnections(0),
		WithSpool(t.TempDir(), 1<<30), WithStallTimeout(time.Minute), WithRequestTimeout(time.Minute)}, opts...)
	r, err := NewResolver(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func noCredentials(string) (string, string, error) { return "", "", nil }

func mustOpen(t *testing.T, r *Resolver, reg *registry, tail int64) (*Blob, []byte) {
	t.Helper()
	b, data, err := r.Open(context.Background(), reg.ref(), reg.dgst, tail)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return b, data
}
