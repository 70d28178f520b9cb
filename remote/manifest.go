package remote

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// maxManifest bounds the size of a manifest read, as registries do.
const maxManifest = 4 << 20

// manifestTypes are the manifest media types a Manifest request accepts.
var manifestTypes = strings.Join([]string{
	ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex,
	"application/vnd.docker.distribution.manifest.v2+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
}, ", ")

// Manifest returns the manifest dgst of the repository of image ref,
// checked against dgst. Hosts are tried in hosts.toml order, mirrors first.
func (r *Resolver) Manifest(ctx context.Context, ref string, dgst digest.Digest) ([]byte, error) {
	if err := dgst.Validate(); err != nil {
		return nil, fmt.Errorf("manifest digest %q: %w: %w", dgst, err, errdefs.ErrInvalidArgument)
	}
	spec, err := reference.Parse(ref)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w: %w", ref, err, errdefs.ErrInvalidArgument)
	}
	registry := spec.Hostname()
	repo := strings.TrimPrefix(spec.Locator, registry+"/")
	hosts, err := r.hostsFor(registry, repo)
	if err != nil {
		return nil, err
	}
	ctx, err = docker.ContextWithRepositoryScope(ctx, spec, false)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", ref, err, errdefs.ErrInvalidArgument)
	}
	var last error
	for _, h := range hosts {
		data, err := r.manifestFrom(ctx, h, objectURL(h, registry, repo, "manifests", dgst), dgst)
		if err == nil {
			return data, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		last = err
	}
	return nil, last
}

func (r *Resolver) manifestFrom(ctx context.Context, h docker.RegistryHost, u string, dgst digest.Digest) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, redact(err)
	}
	for k, v := range h.Header {
		req.Header[k] = v
	}
	req.Header.Set("Accept", manifestTypes)
	resp, err := h.Client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("manifest %s from %s: %w: %w", dgst, h.Host, redact(err), errdefs.ErrUnavailable)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("manifest %s from %s: HTTP %d: %w", dgst, h.Host, resp.StatusCode, classifyStatus(resp.StatusCode).class)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxManifest+1))
	if err != nil {
		return nil, fmt.Errorf("manifest %s from %s: %w: %w", dgst, h.Host, redact(err), errdefs.ErrUnavailable)
	}
	if len(data) > maxManifest {
		return nil, fmt.Errorf("manifest %s from %s: larger than %d bytes: %w", dgst, h.Host, maxManifest, errdefs.ErrInvalidArgument)
	}
	if got := dgst.Algorithm().FromBytes(data); got != dgst {
		return nil, fmt.Errorf("manifest %s from %s: content has digest %s: %w", dgst, h.Host, got, errdefs.ErrDataLoss)
	}
	return data, nil
}
