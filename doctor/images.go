package doctor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	dockerconfig "github.com/containerd/containerd/v2/core/remotes/docker/config"
	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// tocDigestAnnotation marks an eStargz layer whose table of contents
// lazypulld can verify.
const tocDigestAnnotation = "containerd.io/snapshot/stargz/toc.digest"

// credentialEnv is the environment lazypulld looks credentials up with.
func (r *run) credentialEnv() (map[string]string, string) {
	switch {
	case r.opts.Env != nil:
		return envMap(r.opts.Env), "the given environment"
	case r.daemon.env != nil:
		return envMap(r.daemon.env), fmt.Sprintf("lazypulld's environment (pid %d)", r.daemon.pid)
	}
	return envMap(os.Environ()), "this shell's environment (lazypulld's could not be read)"
}

// checkImages checks, per image, the credentials lazypulld would use
// and, with CheckRegistry, whether the registry serves the image with them.
func (r *run) checkImages(ctx context.Context) {
	if len(r.opts.Images) == 0 {
		return
	}
	env, from := r.credentialEnv()
	for _, ref := range r.opts.Images {
		check := "credentials " + ref
		named, err := reference.ParseDockerRef(ref)
		if err != nil {
			r.add(check, Fail, fmt.Sprintf("%q is not an image reference: %v", ref, err), "")
			continue
		}
		host := reference.Domain(named)
		c, err := lookupCredentials(ctx, env, host)
		switch {
		case err != nil:
			r.add(check, Fail, fmt.Sprintf("lazypulld's credential lookup for %s fails (with %s): %v", host, from, err),
				"fix the docker config, or install the credential helper where lazypulld finds it")
		case c.Source != "":
			r.add(check, OK, fmt.Sprintf("credentials for %s from %s, user %q (with %s)", host, c.Source, c.User, from), "")
		default:
			r.add(check, noCredsStatus(env), fmt.Sprintf("no credentials for %s: lazypulld pulls it anonymously (%s, with %s)", host, credsWhere(c, env), from),
				"if the image is private: `docker login` as the user lazypulld runs as, or give it DOCKER_CONFIG (systemctl edit lazypulld: [Service] Environment=DOCKER_CONFIG=/root/.docker)")
		}
		if r.opts.CheckRegistry {
			r.checkRegistry(ctx, ref, env)
		}
	}
}

// noCredsStatus warns when lazypulld cannot even find a docker config
// because its environment names no home: a systemd service without User=
// has neither HOME nor DOCKER_CONFIG.
func noCredsStatus(env map[string]string) Status {
	if env["HOME"] == "" && env["DOCKER_CONFIG"] == "" {
		return Warn
	}
	return OK
}

func credsWhere(c creds, env map[string]string) string {
	switch {
	case c.File != "":
		return "none in " + c.File
	case env["HOME"] == "" && env["DOCKER_CONFIG"] == "":
		return "neither HOME nor DOCKER_CONFIG is set, so no docker config is read"
	}
	return fmt.Sprintf("no docker config in HOME=%s or DOCKER_CONFIG=%s", orNone(env["HOME"]), orNone(env["DOCKER_CONFIG"]))
}

// checkRegistry resolves ref as lazypulld would reach its registry (its
// hosts directory, its credentials) and reads the manifest for this
// platform: whether the registry accepts the credentials, and whether the
// layers can be mounted lazily.
func (r *run) checkRegistry(ctx context.Context, ref string, env map[string]string) {
	check := "registry " + ref
	ctx, _ = captureLogs(ctx) // containerd's resolver logs each failed request
	ctx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
	defer cancel()
	hosts := dockerconfig.HostOptions{
		DefaultScheme: "https",
		Credentials: func(host string) (string, string, error) {
			c, err := lookupCredentials(ctx, env, host)
			return c.User, c.Secret, err
		},
	}
	if d := r.opts.Lazypull.HostsDir; d != "" {
		hosts.HostDir = dockerconfig.HostDirFromRoot(d)
	}
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: dockerconfig.ConfigureHosts(ctx, hosts)})
	name, desc, err := resolver.Resolve(ctx, ref)
	if err != nil {
		r.add(check, Fail, fmt.Sprintf("lazypulld could not resolve %s: %v", ref, err), registryFix(err))
		return
	}
	fetcher, err := resolver.Fetcher(ctx, name)
	if err != nil {
		r.add(check, Fail, err.Error(), "")
		return
	}
	man, err := platformManifest(ctx, fetcher, desc)
	if err != nil {
		r.add(check, Fail, fmt.Sprintf("read the manifest of %s: %v", ref, err), registryFix(err))
		return
	}
	lazy := 0
	for _, l := range man.Layers {
		if l.Annotations[tocDigestAnnotation] != "" {
			lazy++
		}
	}
	found := fmt.Sprintf("the registry serves %s to lazypulld; %d of %d layers carry %s", ref, lazy, len(man.Layers), tocDigestAnnotation)
	switch {
	case lazy == len(man.Layers):
		r.add(check, OK, found, "")
	case lazy == 0:
		r.add(check, Warn, found+": not eStargz, every layer is pulled in full", "convert it: lazypull convert "+ref+" "+ref+"-esgz")
	default:
		r.add(check, Warn, found+": the others are pulled in full, and so is every layer above them", "convert it again with lazypull convert")
	}
}

func registryFix(err error) string {
	var status remoteerrors.ErrUnexpectedStatus
	switch {
	case errors.As(err, &status) && (status.StatusCode == 401 || status.StatusCode == 403), errors.Is(err, docker.ErrInvalidAuthorization):
		return "give lazypulld credentials the registry accepts (docker login as the user lazypulld runs as)"
	case errors.As(err, &status) && status.StatusCode == 404:
		return "check the reference"
	}
	return "check that lazypulld can reach the registry (hosts.toml, proxy, TLS)"
}

// platformManifest reads desc and, for an index, the manifest of this
// machine's platform.
func platformManifest(ctx context.Context, f interface {
	Fetch(context.Context, ocispec.Descriptor) (io.ReadCloser, error)
}, desc ocispec.Descriptor) (ocispec.Manifest, error) {
	var man ocispec.Manifest
	for range 2 {
		rc, err := f.Fetch(ctx, desc)
		if err != nil {
			return man, err
		}
		data, err := io.ReadAll(io.LimitReader(rc, 4<<20))
		rc.Close()
		if err != nil {
			return man, err
		}
		if !images.IsIndexType(desc.MediaType) {
			return man, json.Unmarshal(data, &man)
		}
		var idx ocispec.Index
		if err := json.Unmarshal(data, &idx); err != nil {
			return man, err
		}
		match := platforms.Default()
		found := false
		for _, m := range idx.Manifests {
			if m.Platform != nil && match.Match(*m.Platform) {
				desc, found = m, true
				break
			}
		}
		if !found {
			return man, fmt.Errorf("no manifest for %s", platforms.Format(platforms.DefaultSpec()))
		}
	}
	return man, errors.New("an index inside an index")
}
