package profile

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// emptyJSON is the content of a profile's config. The config's media type
// is ArtifactType too, as artifacts had it before OCI 1.1 added
// artifactType: registries that list referrers by their config's media
// type (go-containerregistry's) list a profile as one too.
var emptyJSON = []byte("{}")

// Push publishes p as a referrer of manifest subject in the repository of
// ref and returns the digest of its artifact manifest. The image manifest
// must be in the repository. Where the registry does not say that it
// indexed the referrer (no OCI-Subject header), Push adds it to the
// referrers tag schema's index, replacing the profiles listed there
// before: a registry without the referrers API keeps one profile per image.
func (c *Client) Push(ctx context.Context, ref string, subject digest.Digest, p *Profile) (digest.Digest, error) {
	if err := subject.Validate(); err != nil {
		return "", fmt.Errorf("subject %q: %v: %w", subject, err, errdefs.ErrInvalidArgument)
	}
	data, err := Encode(p, c.lim)
	if err != nil {
		return "", err
	}
	eps, err := c.reg.Endpoints(ctx, ref, true)
	if err != nil {
		return "", err
	}
	if len(eps) == 0 {
		return "", fmt.Errorf("%s: no registry host to push to: %w", ref, errdefs.ErrNotFound)
	}
	ep := eps[0]
	raw, status, err := c.get(ctx, ep, "manifests/"+subject.String(), manifestAccept, subject, maxSubjectManifest)
	if err != nil {
		if status == http.StatusNotFound {
			return "", fmt.Errorf("%s: image manifest %s is not in the repository: %w", ref, subject, errdefs.ErrNotFound)
		}
		return "", err
	}
	subj := ocispec.Descriptor{MediaType: mediaTypeOf(raw), Digest: subject, Size: int64(len(raw))}
	created := c.now().UTC().Format(time.RFC3339Nano)
	layer := ocispec.Descriptor{MediaType: MediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}
	m := ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: ArtifactType,
		Config:       ocispec.Descriptor{MediaType: ArtifactType, Digest: digest.FromBytes(emptyJSON), Size: int64(len(emptyJSON))},
		Layers:       []ocispec.Descriptor{layer},
		Subject:      &subj,
		Annotations:  map[string]string{annotationCreated: created},
	}
	mraw, err := json.Marshal(m)
	if err != nil {
		return "", fmt.Errorf("encode profile manifest: %w", err)
	}
	for _, b := range [][]byte{emptyJSON, data} {
		if err := c.pushBlob(ctx, ep, b); err != nil {
			return "", err
		}
	}
	md := digest.FromBytes(mraw)
	resp, err := c.put(ctx, ep, "manifests/"+md.String(), mraw, ocispec.MediaTypeImageManifest)
	if err != nil {
		return "", err
	}
	if resp.Header.Get("OCI-Subject") == subject.String() || c.listed(ctx, ep, subject, md) {
		return md, nil
	}
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: ArtifactType, Digest: md, Size: int64(len(mraw)),
		Annotations: map[string]string{annotationCreated: created}}
	return md, c.pushFallback(ctx, ep, subject, desc)
}

// listed reports whether the registry's referrers API lists md as a
// referrer of subject: some registries that have the API do not say so
// with an OCI-Subject header.
func (c *Client) listed(ctx context.Context, ep Endpoint, subject, md digest.Digest) bool {
	raw, _, err := c.get(ctx, ep, "referrers/"+subject.String(), ocispec.MediaTypeImageIndex, "", maxIndex)
	if err != nil {
		return false
	}
	var idx ocispec.Index
	if json.Unmarshal(raw, &idx) != nil {
		return false
	}
	for _, d := range idx.Manifests {
		if d.Digest == md {
			return true
		}
	}
	return false
}

// manifestAccept is what Push accepts for the image manifest.
var manifestAccept = strings.Join([]string{
	ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex,
	"application/vnd.docker.distribution.manifest.v2+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
}, ", ")

// mediaTypeOf returns the media type a manifest names itself with.
func mediaTypeOf(raw []byte) string {
	var v struct {
		MediaType string `json:"mediaType"`
	}
	if json.Unmarshal(raw, &v) == nil && v.MediaType != "" {
		return v.MediaType
	}
	return ocispec.MediaTypeImageManifest
}

// pushFallback lists desc in the referrers tag schema's index of subject.
func (c *Client) pushFallback(ctx context.Context, ep Endpoint, subject digest.Digest, desc ocispec.Descriptor) error {
	tag := fallbackTag(subject)
	idx := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex}
	raw, status, err := c.get(ctx, ep, "manifests/"+tag, ocispec.MediaTypeImageIndex, "", maxIndex)
	switch {
	case status == http.StatusNotFound:
	case err != nil:
		return err
	default:
		if err := json.Unmarshal(raw, &idx); err != nil {
			return fmt.Errorf("%s: referrers index %s: %v: %w", ep.URL.Host, tag, err, errdefs.ErrInvalidArgument)
		}
		if idx.MediaType != ocispec.MediaTypeImageIndex {
			return fmt.Errorf("%s: tag %s is a %q, not a referrers index: %w", ep.URL.Host, tag, idx.MediaType, errdefs.ErrFailedPrecondition)
		}
	}
	kept := idx.Manifests[:0]
	for _, d := range idx.Manifests {
		if d.ArtifactType != ArtifactType {
			kept = append(kept, d)
		}
	}
	idx.Manifests = append(kept, desc)
	out, err := json.Marshal(idx)
	if err != nil {
		return fmt.Errorf("encode referrers index: %w", err)
	}
	_, err = c.put(ctx, ep, "manifests/"+tag, out, ocispec.MediaTypeImageIndex)
	return err
}

// pushBlob uploads data, unless the repository has it, in one request
// after the upload's start.
func (c *Client) pushBlob(ctx context.Context, ep Endpoint, data []byte) error {
	d := digest.FromBytes(data)
	resp, err := c.do(ctx, ep, http.MethodHead, "blobs/"+d.String(), "", nil, "")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	resp, err = c.do(ctx, ep, http.MethodPost, "blobs/uploads/", "", nil, "")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return statusError(ep, http.MethodPost, "blobs/uploads/", resp.StatusCode)
	}
	loc, err := resp.Location()
	if err != nil {
		return fmt.Errorf("%s: blob upload without a location: %w", ep.URL.Host, errdefs.ErrUnavailable)
	}
	q := loc.Query()
	q.Set("digest", d.String())
	loc.RawQuery = q.Encode()
	resp, err = c.do(ctx, ep, http.MethodPut, loc.String(), "", data, "application/octet-stream")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return statusError(ep, http.MethodPut, "blob upload of "+d.String(), resp.StatusCode)
	}
	return nil
}

// put puts a manifest (or tag) and returns the answer, its body closed.
func (c *Client) put(ctx context.Context, ep Endpoint, rel string, data []byte, mediaType string) (*http.Response, error) {
	resp, err := c.do(ctx, ep, http.MethodPut, rel, "", data, mediaType)
	if err != nil {
		return nil, err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		return nil, statusError(ep, http.MethodPut, rel, resp.StatusCode)
	}
	return resp, nil
}
