package remote

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"

	"github.com/containerd/errdefs"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	digest "github.com/opencontainers/go-digest"
)

// End to end against go-containerregistry's in-process registry, which
// rejects suffix ranges (416).
//
// What an Open asks is counted as the ranges it requests, one after
// another, a range asked again at once counted once: a request the client
// retries (an answer that stalled or timed out on a busy machine, which its
// timeouts make a matter of the machine's speed) is not another step.
func TestRegistryEndToEnd(t *testing.T) {
	var (
		mu     sync.Mutex
		ranges []string // of the GETs, in order
	)
	h := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			mu.Lock()
			ranges = append(ranges, r.Header.Get("Range"))
			mu.Unlock()
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	blob, dgst := testBlob(3 << 20)
	host := hostOf(srv.URL)
	resp, err := http.Post(fmt.Sprintf("%s/v2/%s/blobs/uploads/?digest=%s", srv.URL, testRepo, dgst), "application/octet-stream", bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("push: %s", resp.Status)
	}

	dir := hostsDir(t, host, fmt.Sprintf("server = %q\n", srv.URL))
	// No warm-up: its requests run in the background and would be counted
	// with the next Open's.
	r, err := NewResolver(WithHostsDir(dir), WithCredentials(noCredentials), WithWarmConnections(0))
	if err != nil {
		t.Fatal(err)
	}
	ref := host + "/" + testRepo + ":latest"
	ctx := context.Background()
	asked := func() []string {
		mu.Lock()
		defer mu.Unlock()
		all := ranges
		ranges = nil
		return slices.Compact(all)
	}
	tailRange := fmt.Sprintf("bytes=%d-%d", len(blob)-51, len(blob)-1)
	for i := range 2 {
		asked()
		b, tail, err := r.Open(ctx, ref, dgst, 51)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		if b.Size() != int64(len(blob)) || !bytes.Equal(tail, blob[len(blob)-51:]) {
			t.Fatalf("Open: size %d, wrong tail", b.Size())
		}
		// Suffix rejected once, then remembered: size probe plus tail.
		want := [][]string{{"bytes=-51", "bytes=0-0", tailRange}, {"bytes=0-0", tailRange}}[i]
		if got := asked(); !slices.Equal(got, want) {
			t.Errorf("Open #%d asked for %q, want %q", i+1, got, want)
		}
		p := make([]byte, 64<<10)
		if _, err := b.ReadAt(ctx, p, 1<<20); err != nil || !bytes.Equal(p, blob[1<<20:1<<20+len(p)]) {
			t.Fatalf("ReadAt: %v", err)
		}
		for _, rg := range []struct{ off, n int64 }{{0, 512}, {2 << 20, 4096}, {1000, 100}, {3<<20 - 10, 10}} {
			p := make([]byte, rg.n)
			if _, err := b.ReadAt(ctx, p, rg.off); err != nil || !bytes.Equal(p, blob[rg.off:rg.off+rg.n]) {
				t.Fatalf("ReadAt(%d, %d): %v", rg.off, rg.n, err)
			}
		}
	}
	if _, _, err := r.Open(ctx, ref, digest.FromString("missing"), 51); !errdefs.IsNotFound(err) {
		t.Errorf("Open of a missing blob: %v, want not found", err)
	}
}
