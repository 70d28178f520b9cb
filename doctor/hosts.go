package doctor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	dockerconfig "github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
)

// puller is a client of registries whose hosts.toml view is compared with
// lazypulld's.
type puller struct {
	name  string
	roots []string // hosts directories, tried in order
	// scheme is the scheme for hosts no hosts.toml names: "https" for
	// lazypulld, "" for containerd's clients (https, and for a localhost
	// registry on another port than 443, https falling back to http).
	scheme string
}

// view is where a puller pulls a registry from.
type view struct {
	dir       string   // hosts directory used; "" for none
	endpoints []string // scheme://host/path of each pull host, in order
}

// resolve computes p's view of registry with containerd's own hosts.toml
// code. A hosts.toml that does not parse is an error: containerd only logs
// it and pulls as if the file were not there.
func (p puller) resolve(ctx context.Context, registry string) (view, error) {
	ctx, logs := captureLogs(ctx)
	var v view
	opts := dockerconfig.HostOptions{DefaultScheme: p.scheme}
	if len(p.roots) > 0 {
		opts.HostDir = hostDirFromRoots(p.roots)
		dir, err := opts.HostDir(registry)
		if err != nil && !errdefs.IsNotFound(err) {
			return v, err
		}
		v.dir = dir
	}
	hosts, err := dockerconfig.ConfigureHosts(ctx, opts)(registry)
	if err != nil {
		return v, fmt.Errorf("%s: %w", orNone(v.dir), err)
	}
	for _, e := range logs.entries {
		if strings.HasPrefix(e.Message, "failed to decode") {
			return v, fmt.Errorf("%s: %v", strings.TrimPrefix(e.Message, "failed to decode "), e.Data["error"])
		}
	}
	for _, h := range hosts {
		if !h.Capabilities.Has(docker.HostCapabilityPull) {
			continue
		}
		scheme := h.Scheme
		if v.dir == "" && p.scheme == "" && docker.IsLocalhost(registry) && scheme == "https" {
			if _, port, _ := net.SplitHostPort(registry); port != "" && port != "443" {
				scheme = "https-then-http"
			}
		}
		if e := scheme + "://" + h.Host + h.Path; !slices.Contains(v.endpoints, e) {
			v.endpoints = append(v.endpoints, e)
		}
	}
	return v, nil
}

// hostDirFromRoots is the CRI's: the first root with a directory for the
// host wins.
func hostDirFromRoots(roots []string) func(string) (string, error) {
	return func(host string) (string, error) {
		for _, root := range roots {
			dir, err := dockerconfig.HostDirFromRoot(root)(host)
			if err != nil && !errdefs.IsNotFound(err) || dir != "" {
				return dir, err
			}
		}
		return "", errdefs.ErrNotFound
	}
}

// pullers returns lazypulld and the containerd clients to compare it with.
func (r *run) pullers() (lazypulld puller, others []puller) {
	lazypulld = puller{name: "lazypulld", scheme: "https"}
	if d := r.opts.Lazypull.HostsDir; d != "" {
		lazypulld.roots = []string{d}
	}
	if d := r.opts.HostsDir; d != "" {
		others = append(others, puller{name: "containerd's clients (--hosts-dir " + d + ")", roots: []string{d}})
	}
	if r.cri.Active {
		cri := puller{name: "the CRI", roots: r.cri.Roots}
		if r.cri.Transfer && len(r.cri.Roots) > 1 {
			cri.roots = []string{r.cri.ConfigPath} // see checkHostsDir
		}
		others = append(others, cri)
	}
	return lazypulld, others
}

// checkHosts compares lazypulld's hosts directory with containerd's, and
// for each registry in use (the images' and those the directories name)
// where each of them pulls from.
func (r *run) checkHosts(ctx context.Context) {
	r.checkHostsDir()
	lz, others := r.pullers()
	for _, reg := range r.registries(append([]puller{lz}, others...)) {
		check := "hosts " + reg
		want, err := lz.resolve(ctx, reg)
		if err != nil {
			r.add(check, Fail, fmt.Sprintf("lazypulld cannot use its hosts.toml for %s: %v", reg, err), "fix the file")
			continue
		}
		var is issues
		for _, o := range others {
			got, err := o.resolve(ctx, reg)
			if err != nil {
				is.add(Fail, fmt.Sprintf("%s cannot use the hosts.toml for %s: %v (containerd then pulls from https://%s)", o.name, reg, err, reg), "fix the file")
				continue
			}
			s, why := compareViews(got.endpoints, want.endpoints)
			if s == OK {
				continue
			}
			is.add(s, fmt.Sprintf("%s pulls %s from %s (%s), lazypulld from %s (%s): %s",
				o.name, reg, strings.Join(got.endpoints, ", "), orNone(got.dir), strings.Join(want.endpoints, ", "), orNone(want.dir), why),
				hostsFix(reg, got, want, r.opts.Lazypull.HostsDir))
		}
		r.finish(check, is, fmt.Sprintf("pulled from %s (%s) by lazypulld and containerd alike", strings.Join(want.endpoints, ", "), orNone(want.dir)))
	}
}

// compareViews says whether lazypulld (want) reaches a registry where a
// containerd client (got) does. The last endpoint is the registry's
// server, the others its mirrors.
func compareViews(got, want []string) (Status, string) {
	if slices.Equal(got, want) || len(got) == 0 || len(want) == 0 {
		return OK, ""
	}
	const mirrors = "lazypulld reads from other hosts (mirrors) than containerd"
	gs, gh, _ := strings.Cut(got[len(got)-1], "://")
	ws, wh, _ := strings.Cut(want[len(want)-1], "://")
	switch {
	case gh != wh:
		return Warn, mirrors
	case gs == ws, gs == "https-then-http" && ws == "http":
	case gs == "https-then-http":
		return Warn, "containerd falls back to plain HTTP for a local registry, lazypulld does not: if it speaks plain HTTP, lazypulld's reads fail and layers fall back to full pulls"
	default:
		return Fail, "they disagree on plain HTTP, so one of them cannot reach the registry (a lazypulld that cannot read layers falls back to full pulls)"
	}
	if !slices.Equal(got[:len(got)-1], want[:len(want)-1]) {
		return Warn, mirrors
	}
	return OK, ""
}

func hostsFix(reg string, containerd, lazypulld view, lazypullDir string) string {
	switch {
	case containerd.dir != "":
		return fmt.Sprintf("give lazypulld the same hosts.toml: [remote] hosts_dir = %q in its config (now %s)", filepath.Dir(containerd.dir), orNone(lazypullDir))
	case lazypulld.dir != "":
		return fmt.Sprintf("make containerd read the same hosts directory, %s (the CRI's registry config_path; --hosts-dir of ctr and lazypull pull)", filepath.Dir(lazypulld.dir))
	}
	for _, e := range containerd.endpoints {
		if !strings.HasPrefix(e, "https://") {
			return fmt.Sprintf("if %s speaks plain HTTP, write %s/%s/hosts.toml with server = \"http://%s\" (and use the same directory for containerd's clients)",
				reg, orDefault(lazypullDir, "/etc/containerd/certs.d"), reg, reg)
		}
	}
	return "use the same hosts directory for containerd and lazypulld"
}

// checkHostsDir compares the directories themselves.
func (r *run) checkHostsDir() {
	const check = "hosts_dir"
	lz := r.opts.Lazypull.HostsDir
	var is issues
	if r.cri.Active && r.cri.Transfer && len(r.cri.Roots) > 1 {
		// containerd passes config_path unsplit to the transfer service's
		// registry (core/transfer/registry), which joins it with the host.
		is.add(Warn, fmt.Sprintf("the CRI pulls through the transfer service, which takes config_path %q as one directory: it reads no hosts.toml", r.cri.ConfigPath),
			fmt.Sprintf("set config_path = %q (one directory) in [plugins.'%s'.registry]", orDefault(lz, "/etc/containerd/certs.d"), criImagesV2))
	} else if r.cri.Active && lz != "" && !slices.ContainsFunc(r.cri.Roots, func(d string) bool { return sameFile(d, lz) }) {
		is.add(Warn, fmt.Sprintf("the CRI reads hosts.toml from %s, lazypulld from %s", orNone(strings.Join(r.cri.Roots, ":")), lz),
			fmt.Sprintf("set the CRI's registry config_path to %q", lz))
	}
	if lz == "" {
		is.add(Warn, "lazypulld reads no hosts.toml ([remote] hosts_dir is empty): no mirrors, no plain-HTTP registries", "set [remote] hosts_dir = \"/etc/containerd/certs.d\"")
	} else if _, err := os.Stat(lz); err != nil && !errors.Is(err, os.ErrNotExist) {
		is.add(Fail, fmt.Sprintf("lazypulld's hosts_dir: %v", err), "make it readable by lazypulld")
	}
	found := "lazypulld reads " + orNone(lz)
	if r.cri.Active {
		found += ", the CRI " + orNone(strings.Join(r.cri.Roots, ":"))
	}
	r.finish(check, is, found)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

var portDir = regexp.MustCompile(`^(.+)_([0-9]+)_$`)

// registries lists the registries of the images and those the pullers'
// hosts directories have a directory for.
func (r *run) registries(ps []puller) []string {
	var out []string
	addReg := func(reg string) {
		if !slices.Contains(out, reg) {
			out = append(out, reg)
		}
	}
	for _, ref := range r.opts.Images {
		if named, err := reference.ParseDockerRef(ref); err == nil {
			addReg(reference.Domain(named))
		}
	}
	for _, p := range ps {
		for _, root := range p.roots {
			entries, _ := os.ReadDir(root)
			for _, e := range entries {
				if !e.IsDir() || e.Name() == "_default" {
					continue
				}
				name := e.Name()
				if m := portDir.FindStringSubmatch(name); m != nil {
					name = m[1] + ":" + m[2]
				}
				addReg(name)
			}
		}
	}
	return out
}
