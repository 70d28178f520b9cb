package remote

import (
	"fmt"
	"net/http"
	"sync"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
)

// CredentialSource gives credentials for a repository of a registry ahead
// of the default lookup (docker's config.json): on a Kubernetes node, the
// credentials of the pod's pull secrets that the CRI image-service proxy
// kept from the pull.
type CredentialSource interface {
	// Credentials returns the user name and secret (password, or identity
	// token with an empty user) for repository repo of registry host
	// ("docker.io" for Docker Hub), and false when it has none.
	Credentials(host, repo string) (user, secret string, ok bool)
}

// WithCredentialSource makes reads of a repository for which src has
// credentials use them with the registry itself (mirrors get the default
// lookup's). Each such repository gets an authorizer of its own, so that
// credentials of one repository are never sent for another.
func WithCredentialSource(src CredentialSource) Option {
	return func(o *options) error {
		if src == nil {
			return fmt.Errorf("nil credential source: %w", errdefs.ErrInvalidArgument)
		}
		o.source = src
		return nil
	}
}

// maxRepoHosts bounds the repositories whose hosts, with their own
// authorizers, are kept; beyond it they are made anew.
const maxRepoHosts = 1024

// hostsFor returns the hosts to read repo of registry from: the registry's
// (registryHosts), or, when the credential source has credentials for the
// repository, the same hosts with an authorizer that asks the source first.
func (r *Resolver) hostsFor(registry, repo string) ([]docker.RegistryHost, error) {
	hs, err := r.registryHosts(registry)
	if err != nil || r.opts.source == nil {
		return hs, err
	}
	if _, _, ok := r.opts.source.Credentials(registry, repo); !ok {
		return hs, nil
	}
	key := registry + "/" + repo
	r.mu.Lock()
	defer r.mu.Unlock()
	if rh, ok := r.repoHosts[key]; ok {
		return rh, nil
	}
	creds := func(host string) (string, string, error) {
		if canonicalHost(host) == canonicalHost(registry) {
			if u, s, ok := r.opts.source.Credentials(registry, repo); ok {
				return u, s, nil
			}
		}
		return r.opts.credentials(host)
	}
	inner := make([]http.RoundTripper, len(hs))
	for i, h := range hs {
		at, ok := h.Client.Transport.(*authTransport)
		if !ok {
			return hs, nil // not authorized by us: nothing to replace
		}
		inner[i] = at.inner
	}
	// Token requests go out like those of the registry's own authorizer:
	// through the registry's transport, without authorization.
	auth := docker.NewDockerAuthorizer(docker.WithAuthClient(&http.Client{Transport: inner[len(hs)-1]}), docker.WithAuthCreds(creds))
	rh := make([]docker.RegistryHost, len(hs))
	authMu := &sync.Mutex{} // the hosts share auth: see authTransport.mu
	for i, h := range hs {
		c := *h.Client
		c.Transport = &authTransport{inner: inner[i], auth: auth, mu: authMu}
		h.Client, h.Authorizer = &c, auth
		rh[i] = h
	}
	if r.repoHosts == nil || len(r.repoHosts) >= maxRepoHosts {
		r.repoHosts = map[string][]docker.RegistryHost{}
	}
	r.repoHosts[key] = rh
	return rh, nil
}

// canonicalHost names Docker Hub "docker.io" whichever of its host names
// is used.
func canonicalHost(host string) string {
	switch host {
	case "registry-1.docker.io", "index.docker.io":
		return "docker.io"
	default:
		return host
	}
}
