package remote

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/containerd/errdefs"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestManifest checks that a manifest is read by digest from a real
// registry implementation, that a missing one is NotFound, and that a host
// answering with other bytes than the digest names is refused as data loss.
func TestManifest(t *testing.T) {
	h := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	var lie bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if lie && r.Method == http.MethodGet {
			w.Header().Set("Content-Type", ocispec.MediaTypeImageManifest)
			fmt.Fprint(w, `{"schemaVersion":2}`)
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	manifest := []byte(`{"schemaVersion":2,"mediaType":"` + ocispec.MediaTypeImageManifest + `","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}`)
	dgst := digest.FromBytes(manifest)
	req, _ := http.NewRequest(http.MethodPut, fmt.Sprintf("%s/v2/%s/manifests/%s", srv.URL, testRepo, dgst), bytes.NewReader(manifest))
	req.Header.Set("Content-Type", ocispec.MediaTypeImageManifest)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("push: %s", resp.Status)
	}
	host := hostOf(srv.URL)
	r, err := NewResolver(WithHostsDir(hostsDir(t, host, fmt.Sprintf("server = %q\n", srv.URL))), WithCredentials(noCredentials))
	if err != nil {
		t.Fatal(err)
	}
	ref := host + "/" + testRepo + ":latest"
	ctx := context.Background()
	got, err := r.Manifest(ctx, ref, dgst)
	if err != nil || !bytes.Equal(got, manifest) {
		t.Fatalf("Manifest: %q, %v", got, err)
	}
	if _, err := r.Manifest(ctx, ref, digest.FromString("missing")); !errdefs.IsNotFound(err) {
		t.Errorf("a missing manifest: %v, want not found", err)
	}
	lie = true
	if _, err := r.Manifest(ctx, ref, dgst); !errdefs.IsDataLoss(err) {
		t.Errorf("a manifest that does not match its digest: %v, want data loss", err)
	}
}
