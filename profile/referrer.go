package profile

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Endpoint is one host through which a repository is reached.
type Endpoint struct {
	// URL is the repository's base: scheme, host and path up to and
	// including the repository's name (https://registry.example/v2/team/app),
	// with the query every request carries, if any (a mirror's ns=).
	URL *url.URL
	// Client sends the requests; it authorizes them for the repository,
	// for pushing when the Endpoint was asked for pushing.
	Client *http.Client
	// Header is added to every request.
	Header http.Header
}

// Registry finds the endpoints of the repository of an image reference:
// the hosts to try in order (mirrors first, for reads), their clients
// authorized to read, or to push when push is true.
type Registry interface {
	Endpoints(ctx context.Context, ref string, push bool) ([]Endpoint, error)
}

// Bounds of what a Client reads of a registry beside the profile itself.
const (
	// maxIndex bounds a referrers list (or referrers tag index).
	maxIndex = 4 << 20
	// maxArtifactManifest bounds a profile's artifact manifest, and
	// maxSubjectManifest the image manifest it refers to, as registries
	// bound manifests.
	maxArtifactManifest = 64 << 10
	maxSubjectManifest  = 4 << 20
	// maxCandidates bounds the profiles of an image a Fetch considers.
	maxCandidates = 256
)

// annotationCreated is the annotation a profile's artifact manifest (and
// its descriptor in a referrers list) dates it with; Fetch takes the most
// recent.
const annotationCreated = ocispec.AnnotationCreated

// Client publishes profiles as OCI referrers of image manifests and finds
// them. A profile is an artifact manifest of artifactType ArtifactType,
// with the empty config, one layer (the profile's JSON, of MediaType) and
// the image manifest as its subject. Registries that answer the referrers
// API list it there; for the others (the distribution registry 2.x),
// Push maintains the referrers tag schema's index, tagged sha256-<hex of
// the subject>, and Fetch reads it.
type Client struct {
	reg Registry
	lim Limits
	now func() time.Time
}

// NewClient returns a Client that reaches registries through reg and
// refuses profiles beyond lim.
func NewClient(reg Registry, lim Limits) (*Client, error) {
	if reg == nil {
		return nil, fmt.Errorf("profile client: nil registry: %w", errdefs.ErrInvalidArgument)
	}
	if err := lim.check(); err != nil {
		return nil, err
	}
	return &Client{reg: reg, lim: lim, now: time.Now}, nil
}

// Fetch returns the most recent profile published for manifest subject in
// the repository of ref, and the digest of its artifact manifest. The
// error is of class NotFound when none is published; a profile that is
// not valid (too large, a subject other than asked, a layer of another
// type, content not matching its digest, a profile that Decode refuses) is
// an error naming what is wrong.
func (c *Client) Fetch(ctx context.Context, ref string, subject digest.Digest) (*Profile, digest.Digest, error) {
	if err := subject.Validate(); err != nil {
		return nil, "", fmt.Errorf("subject %q: %v: %w", subject, err, errdefs.ErrInvalidArgument)
	}
	eps, err := c.reg.Endpoints(ctx, ref, false)
	if err != nil {
		return nil, "", err
	}
	var errs []error
	for _, ep := range eps {
		p, d, err := c.fetchFrom(ctx, ep, subject)
		if err == nil || ctx.Err() != nil {
			return p, d, err
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return nil, "", fmt.Errorf("%s: no registry host to read from: %w", ref, errdefs.ErrNotFound)
	}
	// Not found only if no host had one.
	for _, err := range errs {
		if !errdefs.IsNotFound(err) {
			return nil, "", errors.Join(errs...)
		}
	}
	return nil, "", errs[0]
}

func (c *Client) fetchFrom(ctx context.Context, ep Endpoint, subject digest.Digest) (*Profile, digest.Digest, error) {
	descs, err := c.referrers(ctx, ep, subject)
	if err != nil {
		return nil, "", err
	}
	best := newest(descs)
	if best == nil {
		return nil, "", fmt.Errorf("%s: no profile refers to %s: %w", ep.URL.Host, subject, errdefs.ErrNotFound)
	}
	if best.Size <= 0 || best.Size > maxArtifactManifest {
		return nil, "", fmt.Errorf("%s: profile manifest %s of %d bytes, want 1 to %d: %w", ep.URL.Host, best.Digest, best.Size, maxArtifactManifest, errdefs.ErrInvalidArgument)
	}
	raw, _, err := c.get(ctx, ep, "manifests/"+best.Digest.String(), ocispec.MediaTypeImageManifest, best.Digest, maxArtifactManifest)
	if err != nil {
		return nil, "", err
	}
	layer, err := checkArtifact(raw, subject, c.lim)
	if err != nil {
		return nil, "", fmt.Errorf("%s: profile manifest %s: %w", ep.URL.Host, best.Digest, err)
	}
	data, _, err := c.get(ctx, ep, "blobs/"+layer.Digest.String(), "", layer.Digest, layer.Size)
	if err != nil {
		return nil, "", err
	}
	if int64(len(data)) != layer.Size {
		return nil, "", fmt.Errorf("%s: profile %s: %d bytes, its manifest says %d: %w", ep.URL.Host, layer.Digest, len(data), layer.Size, errdefs.ErrDataLoss)
	}
	p, err := DecodeBytes(data, c.lim)
	if err != nil {
		return nil, "", fmt.Errorf("%s: profile %s: %w", ep.URL.Host, layer.Digest, err)
	}
	return p, best.Digest, nil
}

// checkArtifact checks a profile's artifact manifest and returns its layer.
func checkArtifact(raw []byte, subject digest.Digest, lim Limits) (ocispec.Descriptor, error) {
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
	}
	switch {
	case m.SchemaVersion != 2 || m.MediaType != ocispec.MediaTypeImageManifest:
		return ocispec.Descriptor{}, fmt.Errorf("schema %d of media type %q, want 2 and %s: %w", m.SchemaVersion, m.MediaType, ocispec.MediaTypeImageManifest, errdefs.ErrInvalidArgument)
	case m.ArtifactType != ArtifactType:
		return ocispec.Descriptor{}, fmt.Errorf("artifactType %q, want %s: %w", m.ArtifactType, ArtifactType, errdefs.ErrInvalidArgument)
	case m.Subject == nil || m.Subject.Digest != subject:
		got := "none"
		if m.Subject != nil {
			got = m.Subject.Digest.String()
		}
		return ocispec.Descriptor{}, fmt.Errorf("subject %s, want %s: %w", got, subject, errdefs.ErrInvalidArgument)
	case len(m.Layers) != 1 || m.Layers[0].MediaType != MediaType:
		return ocispec.Descriptor{}, fmt.Errorf("%d layers, want one of media type %s: %w", len(m.Layers), MediaType, errdefs.ErrInvalidArgument)
	}
	l := m.Layers[0]
	if err := l.Digest.Validate(); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("layer digest %q: %v: %w", l.Digest, err, errdefs.ErrInvalidArgument)
	}
	if l.Size <= 0 || l.Size > lim.Size {
		return ocispec.Descriptor{}, fmt.Errorf("profile of %d bytes, want 1 to %d (limit max_size): %w", l.Size, lim.Size, errdefs.ErrInvalidArgument)
	}
	return l, nil
}

// newest returns the most recent of the profiles of descs (by their
// created annotation; the last listed of equals), nil if there is none.
func newest(descs []ocispec.Descriptor) *ocispec.Descriptor {
	var best *ocispec.Descriptor
	var bestAt time.Time
	n := 0
	for i := range descs {
		d := &descs[i]
		if d.ArtifactType != ArtifactType || d.MediaType != ocispec.MediaTypeImageManifest || d.Digest.Validate() != nil {
			continue
		}
		if n++; n > maxCandidates {
			break
		}
		at, _ := time.Parse(time.RFC3339Nano, d.Annotations[annotationCreated])
		if best == nil || !at.Before(bestAt) {
			best, bestAt = d, at
		}
	}
	return best
}

// referrers lists what refers to subject in ep's repository: through the
// referrers API, or, where the registry has none, the referrers tag
// schema. No list is an empty list.
func (c *Client) referrers(ctx context.Context, ep Endpoint, subject digest.Digest) ([]ocispec.Descriptor, error) {
	q := url.Values{"artifactType": {ArtifactType}}
	raw, status, err := c.get(ctx, ep, "referrers/"+subject.String()+"?"+q.Encode(), ocispec.MediaTypeImageIndex, "", maxIndex)
	if fallback(status) {
		raw, status, err = c.get(ctx, ep, "manifests/"+fallbackTag(subject), ocispec.MediaTypeImageIndex, "", maxIndex)
		if status == http.StatusNotFound {
			return nil, nil
		}
	}
	if err != nil {
		return nil, err
	}
	var idx ocispec.Index
	if err := json.Unmarshal(raw, &idx); err != nil {
		return nil, fmt.Errorf("%s: referrers of %s: %v: %w", ep.URL.Host, subject, err, errdefs.ErrInvalidArgument)
	}
	return idx.Manifests, nil
}

// fallback reports whether a registry's answer to a referrers request
// means it has no referrers API.
func fallback(status int) bool {
	switch status {
	case http.StatusNotFound, http.StatusBadRequest, http.StatusMethodNotAllowed, http.StatusNotImplemented:
		return true
	}
	return false
}

// fallbackTag is the referrers tag schema's tag for subject.
func fallbackTag(subject digest.Digest) string {
	return subject.Algorithm().String() + "-" + subject.Encoded()
}

// endpointURL is ep's URL for rel ("manifests/<ref>", "blobs/<digest>",
// possibly with a query of its own).
func endpointURL(ep Endpoint, rel string) string {
	u := *ep.URL
	p, q, _ := strings.Cut(rel, "?")
	u.Path = path.Join(u.Path, p)
	if strings.HasSuffix(p, "/") { // blobs/uploads/: a registry redirects without
		u.Path += "/"
	}
	u.RawPath = ""
	vals := u.Query()
	if q != "" {
		extra, _ := url.ParseQuery(q)
		for k, v := range extra {
			vals[k] = v
		}
	}
	u.RawQuery = vals.Encode()
	return u.String()
}

// get reads rel of ep, at most max bytes; with want, the content must have
// that digest. It returns the HTTP status, also with an error.
func (c *Client) get(ctx context.Context, ep Endpoint, rel, accept string, want digest.Digest, max int64) ([]byte, int, error) {
	resp, err := c.do(ctx, ep, http.MethodGet, rel, accept, nil, "")
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, resp.StatusCode, statusError(ep, http.MethodGet, rel, resp.StatusCode)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	if err != nil {
		return nil, resp.StatusCode, fmt.Errorf("%s: read %s: %v: %w", ep.URL.Host, rel, err, errdefs.ErrUnavailable)
	}
	if int64(len(data)) > max {
		return nil, resp.StatusCode, fmt.Errorf("%s: %s: larger than %d bytes: %w", ep.URL.Host, rel, max, errdefs.ErrInvalidArgument)
	}
	if want != "" {
		if got := want.Algorithm().FromBytes(data); got != want {
			return nil, resp.StatusCode, fmt.Errorf("%s: %s: content has digest %s: %w", ep.URL.Host, rel, got, errdefs.ErrDataLoss)
		}
	}
	return data, resp.StatusCode, nil
}

// do sends one request to ep. Neither the URL's query nor anything the
// registry answers beyond its status goes into errors: a query may hold a
// signed URL's secret.
func (c *Client) do(ctx context.Context, ep Endpoint, method, rel, accept string, body []byte, contentType string) (*http.Response, error) {
	u := rel
	if !strings.HasPrefix(rel, "http://") && !strings.HasPrefix(rel, "https://") {
		u = endpointURL(ep, rel)
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %v: %w", method, ep.URL.Host, err, errdefs.ErrInvalidArgument)
	}
	if body != nil {
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		req.ContentLength = int64(len(body))
	}
	for k, v := range ep.Header {
		req.Header[k] = v
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	client := ep.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL
		}
		return nil, fmt.Errorf("%s %s: %v: %w", method, ep.URL.Host, err, errdefs.ErrUnavailable)
	}
	return resp, nil
}

// statusError is the error of an unexpected HTTP status.
func statusError(ep Endpoint, method, rel string, status int) error {
	var class error = errdefs.ErrUnknown
	switch {
	case status == http.StatusNotFound:
		class = errdefs.ErrNotFound
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		class = errdefs.ErrPermissionDenied
	case status == http.StatusTooManyRequests || status >= 500:
		class = errdefs.ErrUnavailable
	case status >= 400:
		class = errdefs.ErrInvalidArgument
	}
	rel, _, _ = strings.Cut(rel, "?")
	return fmt.Errorf("%s: %s %s: HTTP %d: %w", ep.URL.Host, method, rel, status, class)
}
