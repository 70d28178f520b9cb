package profile

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/registry"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// testRegistry is a Registry of one host, reached over plain HTTP.
type testRegistry struct{ base string }

func (r testRegistry) Endpoints(_ context.Context, ref string, _ bool) ([]Endpoint, error) {
	repo := strings.SplitN(ref, ":", 2)[0]
	u, err := url.Parse(r.base + "/v2/" + repo)
	if err != nil {
		return nil, err
	}
	return []Endpoint{{URL: u, Client: http.DefaultClient}}, nil
}

// startRegistry starts go-containerregistry's in-process registry, with or
// without the referrers API, and pushes an image manifest (whose blobs it
// does not check) to repo app; it returns the client and the manifest's
// digest.
func startRegistry(t *testing.T, referrers bool) (*Client, *httptest.Server, digest.Digest) {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(nopLogger()), registry.WithReferrersSupport(referrers)))
	t.Cleanup(srv.Close)
	c, err := NewClient(testRegistry{srv.URL}, DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	ep, _ := testRegistry{srv.URL}.Endpoints(context.Background(), "app", true)
	cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	if err := c.pushBlob(context.Background(), ep[0], cfg); err != nil {
		t.Fatal(err)
	}
	m, _ := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cfg), Size: int64(len(cfg))}, Layers: []ocispec.Descriptor{}})
	md := digest.FromBytes(m)
	if _, err := c.put(context.Background(), ep[0], "manifests/"+md.String(), m, ocispec.MediaTypeImageManifest); err != nil {
		t.Fatal(err)
	}
	return c, srv, md
}

func TestReferrerRoundTrip(t *testing.T) {
	for _, referrers := range []bool{true, false} {
		t.Run(fmt.Sprintf("referrers API %v", referrers), func(t *testing.T) {
			ctx := context.Background()
			c, srv, md := startRegistry(t, referrers)
			if _, _, err := c.Fetch(ctx, "app", md); !errdefs.IsNotFound(err) {
				t.Fatalf("Fetch before a Push: %v, want not found", err)
			}
			older := testProfile()
			older.Reads = older.Reads[:1]
			c.now = func() time.Time { return time.Unix(1000, 0) }
			if _, err := c.Push(ctx, "app", md, older); err != nil {
				t.Fatal(err)
			}
			c.now = func() time.Time { return time.Unix(2000, 0) }
			ad, err := c.Push(ctx, "app", md, testProfile())
			if err != nil {
				t.Fatal(err)
			}
			p, got, err := c.Fetch(ctx, "app", md)
			if err != nil {
				t.Fatal(err)
			}
			if got != ad || fmt.Sprint(p) != fmt.Sprint(testProfile()) {
				t.Fatalf("Fetch = %s %+v, want the newest profile %s", got, p, ad)
			}
			// The tag schema's index is there exactly when the registry
			// has no referrers API, and lists one profile.
			resp, err := http.Get(srv.URL + "/v2/app/manifests/" + fallbackTag(md))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if referrers != (resp.StatusCode == http.StatusNotFound) {
				t.Fatalf("the referrers tag: HTTP %d with the referrers API %v", resp.StatusCode, referrers)
			}
			if !referrers {
				var idx ocispec.Index
				json.NewDecoder(resp.Body).Decode(&idx)
				if len(idx.Manifests) != 1 || idx.Manifests[0].Digest != ad {
					t.Fatalf("the referrers tag lists %+v, want the newest profile alone", idx.Manifests)
				}
			}
			// Another image has none.
			if _, _, err := c.Fetch(ctx, "app", digest.FromString("other")); !errdefs.IsNotFound(err) {
				t.Fatalf("Fetch of another image: %v, want not found", err)
			}
		})
	}
}

func TestPushNeedsTheImage(t *testing.T) {
	c, _, _ := startRegistry(t, false)
	if _, err := c.Push(context.Background(), "app", digest.FromString("absent"), testProfile()); !errdefs.IsNotFound(err) {
		t.Fatalf("Push for a manifest not in the repository: %v, want not found", err)
	}
}

// TestFetchRefusesHostileReferrers publishes, by hand, artifacts a hostile
// registry (or pusher) could list for an image: Fetch refuses each with an
// error naming what is wrong, and never returns a profile.
func TestFetchRefusesHostileReferrers(t *testing.T) {
	ctx := context.Background()
	good, _ := Encode(testProfile(), DefaultLimits)
	for _, tc := range []struct {
		name   string
		modify func(m *ocispec.Manifest, blob *[]byte, md digest.Digest)
		want   string
	}{
		{"wrong subject", func(m *ocispec.Manifest, _ *[]byte, _ digest.Digest) {
			m.Subject.Digest = digest.FromString("another image")
		}, "subject"},
		{"no subject", func(m *ocispec.Manifest, _ *[]byte, _ digest.Digest) { m.Subject = nil }, "subject none"},
		{"layer of another type", func(m *ocispec.Manifest, _ *[]byte, _ digest.Digest) {
			m.Layers[0].MediaType = ocispec.MediaTypeImageLayerGzip
		}, "want one of media type"},
		{"two layers", func(m *ocispec.Manifest, _ *[]byte, _ digest.Digest) {
			m.Layers = append(m.Layers, m.Layers[0])
		}, "2 layers"},
		{"profile larger than the limit", func(m *ocispec.Manifest, _ *[]byte, _ digest.Digest) {
			m.Layers[0].Size = DefaultLimits.Size + 1
		}, "limit max_size"},
		{"size not the blob's", func(m *ocispec.Manifest, _ *[]byte, _ digest.Digest) { m.Layers[0].Size-- }, "larger than"},
		{"profile with an unknown field", func(m *ocispec.Manifest, b *[]byte, _ digest.Digest) {
			*b = bytes.Replace(*b, []byte(`{"version":1`), []byte(`{"version":1,"run":"sh"`), 1)
		}, `unknown field "run"`},
		{"profile with a path out of the layer", func(m *ocispec.Manifest, b *[]byte, _ digest.Digest) {
			*b = bytes.Replace(*b, []byte(`"usr/bin/python3.11"`), []byte(`"../../../etc/shadow"`), 1)
		}, "not clean"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _, md := startRegistry(t, false)
			blob := bytes.Clone(good)
			m := ocispec.Manifest{
				Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, ArtifactType: ArtifactType,
				Config:  ocispec.Descriptor{MediaType: ArtifactType, Digest: digest.FromBytes(emptyJSON), Size: int64(len(emptyJSON))},
				Layers:  []ocispec.Descriptor{{MediaType: MediaType, Digest: digest.FromBytes(blob), Size: int64(len(blob))}},
				Subject: &ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: md, Size: 1},
			}
			tc.modify(&m, &blob, md)
			if !bytes.Equal(blob, good) { // the profile itself is hostile
				m.Layers[0].Digest, m.Layers[0].Size = digest.FromBytes(blob), int64(len(blob))
			}
			publish(t, c, md, m, blob)
			p, _, err := c.Fetch(ctx, "app", md)
			if err == nil {
				t.Fatalf("fetched %+v, want an error", p)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want one naming %q", err, tc.want)
			}
		})
	}
}

// publish pushes m and blob as they are and lists m in the referrers tag
// of md.
func publish(t *testing.T, c *Client, md digest.Digest, m ocispec.Manifest, blob []byte) {
	t.Helper()
	ctx := context.Background()
	eps, _ := c.reg.Endpoints(ctx, "app", true)
	ep := eps[0]
	for _, b := range [][]byte{emptyJSON, blob} {
		if err := c.pushBlob(ctx, ep, b); err != nil {
			t.Fatal(err)
		}
	}
	raw, _ := json.Marshal(m)
	ad := digest.FromBytes(raw)
	if _, err := c.put(ctx, ep, "manifests/"+ad.String(), raw, ocispec.MediaTypeImageManifest); err != nil {
		t.Fatal(err)
	}
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: ArtifactType, Digest: ad, Size: int64(len(raw))}
	if err := c.pushFallback(ctx, ep, md, desc); err != nil {
		t.Fatal(err)
	}
}

func nopLogger() *log.Logger { return log.New(io.Discard, "", 0) }
