package doctor

import (
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	srvconfig "github.com/containerd/containerd/v2/cmd/containerd/server/config"
	"github.com/containerd/platforms"
)

// issues collects the problems of one check; the finding gets the worst
// status and every message.
type issues struct {
	status     Status
	found, fix []string
}

func (is *issues) add(s Status, found, fix string) {
	is.status = max(is.status, s)
	is.found = append(is.found, found)
	if fix != "" && !slices.Contains(is.fix, fix) {
		is.fix = append(is.fix, fix)
	}
}

// finish adds the finding of check: the problems found, or okFound.
func (r *run) finish(check string, is issues, okFound string) {
	if len(is.found) == 0 {
		r.add(check, OK, okFound, "")
		return
	}
	r.add(check, is.status, strings.Join(is.found, "; "), strings.Join(is.fix, "; "))
}

func cleanPath(p string) string {
	return filepath.Clean(strings.TrimPrefix(p, "unix://"))
}

func isSnapshotType(t string) bool { return t == "snapshot" || t == snapshotter }

// proxy returns the proxy plugin entry of the snapshotter.
func (r *run) proxy() (srvconfig.ProxyPlugin, bool) {
	if r.cfg == nil {
		return srvconfig.ProxyPlugin{}, false
	}
	pp, ok := r.cfg.Proxy[r.opts.Snapshotter]
	return pp, ok && isSnapshotType(pp.Type)
}

// proxySnippet is the proxy plugin entry for the detected version.
func (r *run) proxySnippet() string {
	l := r.opts.Lazypull
	s := fmt.Sprintf("[proxy_plugins.%s] type = \"snapshot\", address = %q", r.opts.Snapshotter, l.Address)
	if r.version.atLeast(1, 7, 16) {
		s += fmt.Sprintf(", exports = { root = %q, enable_remote_snapshot_annotations = \"true\" }", l.Root)
	}
	return s
}

// checkProxyPlugin checks the [proxy_plugins.NAME] entry: type, address
// and that it is not disabled.
func (r *run) checkProxyPlugin() {
	const check = "containerd.proxy_plugin"
	if r.cfg == nil {
		return
	}
	name, sock := r.opts.Snapshotter, r.opts.Lazypull.Address
	pp, ok := r.cfg.Proxy[name]
	if !ok {
		for other, p := range r.cfg.Proxy {
			if isSnapshotType(p.Type) && sameFile(p.Address, sock) {
				r.add(check, Warn, fmt.Sprintf("lazypulld's socket is the proxy plugin %q, not %q", other, name),
					fmt.Sprintf("use --snapshotter %s with doctor, ctr, nerdctl and lazypull pull (the checks below use %q)", other, other))
				r.opts.Snapshotter, name, pp, ok = other, other, p, true
				break
			}
		}
	}
	if !ok {
		r.add(check, Fail, fmt.Sprintf("%s has no [proxy_plugins.%s]: containerd does not know the snapshotter", r.cfg.Path, name),
			"add "+r.proxySnippet()+" (README, \"Configure containerd\"), then restart containerd")
		return
	}
	file := r.cfg.ProxyFile[name]
	var is issues
	if !isSnapshotType(pp.Type) {
		is.add(Fail, fmt.Sprintf("[proxy_plugins.%s] in %s has type = %q", name, file, pp.Type),
			`set type = "snapshot"`)
	}
	if id := snapshotter + "." + name; r.cfg.disabled(id) {
		is.add(Fail, fmt.Sprintf("disabled_plugins lists %q", id), "remove it from disabled_plugins")
	}
	if !sameFile(pp.Address, sock) {
		is.add(Fail, fmt.Sprintf("[proxy_plugins.%s] in %s has address = %q, but lazypulld listens on %s (%s)",
			name, file, pp.Address, sock, r.opts.Lazypull.ConfigPath),
			fmt.Sprintf("set address = %q in [proxy_plugins.%s] of %s and restart containerd (or set lazypulld's address to %q)", sock, name, file, pp.Address))
	}
	r.finish(check, is, fmt.Sprintf("[proxy_plugins.%s] type = %q, address = %q (%s)", name, pp.Type, pp.Address, file))
}

// checkExports checks the proxy plugin's exports: root (1.7.16+, the CRI's
// image filesystem usage) and enable_remote_snapshot_annotations (2.1+,
// the transfer service's layer annotations).
func (r *run) checkExports() {
	const check = "containerd.exports"
	pp, ok := r.proxy()
	if !ok {
		return
	}
	name := r.opts.Snapshotter
	if !r.version.atLeast(1, 7, 16) {
		if len(pp.Exports) > 0 {
			r.add(check, Warn, fmt.Sprintf("[proxy_plugins.%s] has exports, which containerd %s ignores (they exist from 1.7.16)", name, r.version),
				"remove them, or keep them for an upgrade")
		} else {
			r.add(check, Skip, fmt.Sprintf("containerd %s has no proxy plugin exports (from 1.7.16)", r.version), "")
		}
		return
	}
	var is issues
	root := r.opts.Lazypull.Root
	switch got := pp.Exports["root"]; {
	case got == "":
		is.add(Warn, "no exports.root: the CRI reports image filesystem usage (kubelet's image garbage collection) from a directory under containerd's root, not lazypulld's",
			fmt.Sprintf("add root = %q to exports of [proxy_plugins.%s]", root, name))
	case !sameFile(got, root):
		is.add(Warn, fmt.Sprintf("exports.root is %q, but lazypulld's root is %s", got, root),
			fmt.Sprintf("set root = %q in exports of [proxy_plugins.%s]", root, name))
	}
	ann := pp.Exports["enable_remote_snapshot_annotations"]
	switch {
	case r.version.atLeast(2, 1, 0) && ann != "true":
		is.add(Fail, "exports has no enable_remote_snapshot_annotations = \"true\": the transfer service (ctr image pull; CRI pulls unless they use the local pull path) does not pass image references and layer digests, and every layer is pulled in full",
			fmt.Sprintf("add enable_remote_snapshot_annotations = \"true\" to exports of [proxy_plugins.%s] (a string, quoted)", name))
	case r.version.Major == 2 && !r.version.atLeast(2, 1, 0):
		is.add(Warn, fmt.Sprintf("containerd %s's transfer service never passes layer annotations (from 2.1): ctr image pull into %s is not lazy", r.version, name),
			"pull with `lazypull pull`, or upgrade containerd to 2.1 or later")
	}
	r.finish(check, is, fmt.Sprintf("exports: root = %q, enable_remote_snapshot_annotations = %q", pp.Exports["root"], ann))
}

// unpackEntry is one [[plugins.'io.containerd.transfer.v1.local'.unpack_config]].
type unpackEntry struct {
	Platform, Snapshotter, Differ string
	Optional                      bool
}

// unpackConfig returns the transfer service's unpack_config list and
// whether the file sets one (without, containerd uses its defaults).
func (r *run) unpackConfig() ([]unpackEntry, bool) {
	t := r.cfg.pluginTable(transferV2)
	raw, ok := t["unpack_config"].([]any)
	if !ok {
		return nil, false
	}
	var out []unpackEntry
	for _, e := range raw {
		m, _ := e.(map[string]any)
		out = append(out, unpackEntry{Platform: str(m["platform"], ""), Snapshotter: str(m["snapshotter"], ""),
			Differ: str(m["differ"], ""), Optional: boolean(m["optional"], false)})
	}
	return out, true
}

// transferUnpacksInto reports whether the transfer service unpacks images
// of this machine's platform into the snapshotter.
func (r *run) transferUnpacksInto(name string) bool {
	entries, _ := r.unpackConfig()
	for _, e := range entries {
		if ok, err := r.platformMatches(e.Platform); e.Snapshotter == name && ok && err == nil {
			return true
		}
	}
	return false
}

// platformMatches is the transfer service's test of an unpack_config
// platform: the OS, and the whole platform with check_platform_supported.
// An error means it does not parse, and the transfer service does not
// start.
func (r *run) platformMatches(s string) (bool, error) {
	p, err := platforms.Parse(s)
	if err != nil {
		return false, fmt.Errorf("unpack_config: platform %q does not parse: %v: the transfer service does not start", s, err)
	}
	host := platforms.DefaultSpec()
	if boolean(r.cfg.pluginTable(transferV2)["check_platform_supported"], false) {
		return platforms.Only(p).Match(host), nil
	}
	return platforms.OnlyOS(p).Match(host), nil
}

func (r *run) unpackSnippet(name string) string {
	p := "linux/" + runtime.GOARCH
	return fmt.Sprintf("[[plugins.'%s'.unpack_config]] platform = %q, snapshotter = %q, differ = \"walking\" (and the same for \"overlayfs\": a list replaces the defaults)", transferV2, p, name)
}

// checkUnpackConfig checks that containerd 2.x's transfer service unpacks
// into the snapshotter, and still into overlayfs.
func (r *run) checkUnpackConfig() {
	const check = "containerd.unpack_config"
	if r.cfg == nil || r.version.Major < 2 {
		return
	}
	name := r.opts.Snapshotter
	if r.cfg.disabled(transferV2) {
		r.add(check, Warn, fmt.Sprintf("disabled_plugins lists %s: ctr image pull and CRI pulls through it fail", transferV2), "remove it from disabled_plugins")
		return
	}
	entries, set := r.unpackConfig()
	if !set {
		r.add(check, Fail, fmt.Sprintf("no unpack_config for %s: the transfer service (ctr image pull, CRI pulls) unpacks only into overlayfs, a pull into %s is not unpacked there", transferV2, name),
			"add "+r.unpackSnippet(name))
		return
	}
	var is issues
	var ours, overlay bool
	host := platforms.Format(platforms.DefaultSpec())
	for _, e := range entries {
		ok, err := r.platformMatches(e.Platform)
		switch {
		case err != nil:
			is.add(Fail, err.Error(), "fix the platform (e.g. \"linux/"+runtime.GOARCH+"\")")
		case e.Snapshotter == name && !ok:
			is.add(Fail, fmt.Sprintf("the unpack_config entry for %s has platform %q, which does not match this machine (%s)", name, e.Platform, host),
				fmt.Sprintf("set platform = \"linux/%s\"", runtime.GOARCH))
		case e.Snapshotter == name:
			ours = true
		case e.Snapshotter == "overlayfs":
			overlay = overlay || ok
		}
	}
	if !ours && is.status < Fail {
		is.add(Fail, fmt.Sprintf("unpack_config does not list %s for this platform: the transfer service does not unpack into it", name), "add "+r.unpackSnippet(name))
	}
	if !overlay {
		is.add(Warn, "unpack_config does not list overlayfs: the list replaces the defaults, so pulls into overlayfs (ctr without --snapshotter) are no longer unpacked",
			fmt.Sprintf("add [[plugins.'%s'.unpack_config]] platform = \"linux/%s\", snapshotter = \"overlayfs\", differ = \"walking\"", transferV2, runtime.GOARCH))
	}
	r.finish(check, is, fmt.Sprintf("unpack_config lists %s and overlayfs", name))
}

// str returns v as a string, or def when it is not one.
func str(v any, def string) string {
	if s, ok := v.(string); ok {
		return s
	}
	return def
}

// boolean returns v as a bool, or def when it is not one.
func boolean(v any, def bool) bool {
	if b, ok := v.(bool); ok {
		return b
	}
	return def
}
