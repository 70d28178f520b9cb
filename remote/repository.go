package remote

import (
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strings"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/containerd/errdefs"
)

// RepositoryHost is a host through which the repository of an image is
// reached, for requests the Resolver does not make itself (the referrers
// of an image, pushes of artifacts).
type RepositoryHost struct {
	// URL is the repository's base: scheme://host/v2/<repository>, with
	// the ns query parameter a mirror is sent.
	URL *url.URL
	// Client authorizes each request for the repository (to pull, or to
	// pull and push), with the Resolver's credentials, TLS and timeouts.
	Client *http.Client
	// Header holds the headers hosts.toml sets for the host.
	Header http.Header
}

// RepositoryHosts returns the hosts of the repository of image ref that
// can pull (or push, with push) it, in hosts.toml order, mirrors first.
func (r *Resolver) RepositoryHosts(ref string, push bool) ([]RepositoryHost, error) {
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
	want := docker.HostCapabilityPull
	if push {
		want = docker.HostCapabilityPush
	}
	var out []RepositoryHost
	for _, h := range hosts {
		if !h.Capabilities.Has(want) {
			continue
		}
		u := &url.URL{Scheme: h.Scheme, Host: h.Host, Path: path.Join("/", h.Path, repo)}
		if h.Host != registry && (registry != "docker.io" || h.Host != "registry-1.docker.io") {
			u.RawQuery = url.Values{"ns": {registry}}.Encode()
		}
		c := *h.Client
		c.Transport = &scopeTransport{inner: h.Client.Transport, spec: spec, push: push}
		out = append(out, RepositoryHost{URL: u, Client: &c, Header: h.Header.Clone()})
	}
	return out, nil
}

// scopeTransport gives each request the repository scope that the
// authorizer asks tokens for.
type scopeTransport struct {
	inner http.RoundTripper
	spec  reference.Spec
	push  bool
}

func (t *scopeTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, err := docker.ContextWithRepositoryScope(req.Context(), t.spec, t.push)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", t.spec, err, errdefs.ErrInvalidArgument)
	}
	inner := t.inner
	if inner == nil {
		inner = http.DefaultTransport
	}
	return inner.RoundTrip(req.WithContext(ctx))
}
