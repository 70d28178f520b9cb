package doctor

import (
	"fmt"
	"path/filepath"
	"strings"
)

// criHostsDefault is the CRI's registry config_path on Linux when the
// configuration sets neither it nor mirrors (containerd 2.x).
const criHostsDefault = "/etc/containerd/certs.d:/etc/docker/certs.d"

// criInfo is how the CRI plugin pulls, for the hosts checks.
type criInfo struct {
	// Active: the CRI plugin runs and pulls into the snapshotter.
	Active bool
	// Roots are the hosts.toml directories it reads, in order; nil for
	// none.
	Roots []string
	// ConfigPath is config_path as containerd sees it ("" for unset).
	ConfigPath string
	// Transfer: it pulls through the transfer service, which takes
	// config_path as one directory.
	Transfer bool
}

// checkCRI checks the CRI plugin's snapshotter and the settings that make
// its pulls pass layer annotations, for 1.x ([plugins."io.containerd.grpc.v1.cri"])
// and 2.x ([plugins.'io.containerd.cri.v1.images']).
func (r *run) checkCRI() {
	const check = "containerd.cri"
	if r.cfg == nil {
		return
	}
	name := r.opts.Snapshotter
	notOurs := Warn
	if r.opts.CRI {
		notOurs = Fail
	}
	id, section := criV1, `[plugins."io.containerd.grpc.v1.cri".containerd]`
	var t map[string]any
	if r.version.Major >= 2 {
		id, section = criImagesV2, "[plugins.'io.containerd.cri.v1.images']"
		t = r.cfg.pluginTable(criImagesV2)
	} else {
		t = r.cfg.pluginTable(criV1, "containerd")
	}
	if r.cfg.disabled(criV1, criImagesV2) {
		s := Skip
		fix := ""
		if r.opts.CRI {
			s, fix = Fail, "remove the CRI plugin from disabled_plugins"
		}
		r.add(check, s, "the CRI plugin is disabled (disabled_plugins): Kubernetes cannot use this containerd", fix)
		return
	}
	sn := str(t["snapshotter"], "overlayfs")
	dsa := boolean(t["disable_snapshot_annotations"], true)
	if r.version.Major >= 2 {
		if dropped := r.droppedCRIKeys(t); dropped != "" {
			r.add(check, Fail, fmt.Sprintf("%s, which containerd %s ignores: it reads the CRI's snapshotter from %s, and moves these keys there only from a version 2 file whose table also has runtimes; CRI pulls go to %q", dropped, r.version, section, sn),
				fmt.Sprintf("write snapshotter = %q and disable_snapshot_annotations = false in %s (a version 3 file)", name, section))
			return
		}
	}
	if sn != name {
		r.add(check, notOurs, fmt.Sprintf("CRI pulls (Kubernetes) go to snapshotter %q, not %s", sn, name),
			fmt.Sprintf("if this node runs Kubernetes, set snapshotter = %q and disable_snapshot_annotations = false in %s", name, section))
		return
	}
	r.cri = criInfo{Active: true}
	registry := r.cfg.pluginTable(id, "registry")
	r.cri.ConfigPath = str(registry["config_path"], "")
	if mirrors, _ := registry["mirrors"].(map[string]any); r.cri.ConfigPath == "" && r.version.Major >= 2 && len(mirrors) == 0 {
		r.cri.ConfigPath = criHostsDefault
	}
	r.cri.Roots = filepath.SplitList(r.cri.ConfigPath)
	if r.version.Major < 2 {
		if dsa {
			r.add(check, Fail, "CRI pulls go to "+name+", but disable_snapshot_annotations is true (the default): the CRI does not pass image references and layer digests, and every layer is pulled in full",
				"set disable_snapshot_annotations = false in "+section)
			return
		}
		r.add(check, OK, fmt.Sprintf("CRI pulls go to %s with snapshot annotations (disable_snapshot_annotations = false)", name), "")
		return
	}
	if why := r.localPullReason(t); why != "" {
		if dsa {
			r.add(check, Fail, fmt.Sprintf("CRI pulls go to %s through the local pull path (%s), which passes layer annotations only with disable_snapshot_annotations = false; it is true (the default), so every layer is pulled in full", name, why),
				"set disable_snapshot_annotations = false in "+section)
			return
		}
		r.add(check, OK, fmt.Sprintf("CRI pulls go to %s through the local pull path (%s), with snapshot annotations", name, why), "")
		return
	}
	r.cri.Transfer = true
	var is issues
	if !r.transferUnpacksInto(name) {
		is.add(Fail, "CRI pulls go through the transfer service, whose unpack_config does not list "+name+" for this platform: the pull is not unpacked there",
			"add "+r.unpackSnippet(name)+", or set disable_snapshot_annotations = false in "+section+" for the local pull path")
	}
	if pp, _ := r.proxy(); pp.Exports["enable_remote_snapshot_annotations"] != "true" {
		is.add(Fail, "CRI pulls go through the transfer service, which passes layer annotations only when the proxy plugin exports enable_remote_snapshot_annotations = \"true\"",
			fmt.Sprintf("add it to exports of [proxy_plugins.%s], or set disable_snapshot_annotations = false in %s for the local pull path", name, section))
	}
	r.finish(check, is, fmt.Sprintf("CRI pulls go to %s through the transfer service (unpack_config lists it, enable_remote_snapshot_annotations = \"true\")", name))
}

// localPullReason says why containerd 2.x's CRI uses the local pull path
// (client-side, as in 1.x) instead of the transfer service, or "" when it
// does not. The settings are those of containerd's
// CheckLocalImagePullConfigs (internal/cri/config); before 2.1 the CRI
// always pulls locally.
func (r *run) localPullReason(t map[string]any) string {
	if !r.version.atLeast(2, 1, 0) {
		return fmt.Sprintf("containerd %s's CRI always pulls that way; the transfer service is used from 2.1", r.version)
	}
	if boolean(t["use_local_image_pull"], false) {
		return "use_local_image_pull = true"
	}
	if !boolean(t["disable_snapshot_annotations"], true) {
		return "disable_snapshot_annotations = false; containerd logs \"Falling back to local image pull mode\""
	}
	var why []string
	if boolean(t["discard_unpacked_layers"], false) {
		why = append(why, "discard_unpacked_layers = true")
	}
	if boolean(t["image_pull_with_sync_fs"], false) {
		why = append(why, "image_pull_with_sync_fs = true")
	}
	if v, ok := t["max_concurrent_downloads"].(int64); ok && v != 3 {
		why = append(why, fmt.Sprintf("max_concurrent_downloads = %d", v))
	}
	reg, _ := t["registry"].(map[string]any)
	for _, k := range []string{"mirrors", "configs", "auths"} {
		if m, ok := reg[k].(map[string]any); ok && len(m) > 0 {
			why = append(why, "registry."+k+" is set")
		}
	}
	return strings.Join(why, ", ")
}

// droppedCRIKeys names the 1.x CRI keys of a version 2 file that name
// the snapshotter but did not reach containerd 2.x's image service.
func (r *run) droppedCRIKeys(images map[string]any) string {
	old := r.cfg.pluginTable(criV1, "containerd")
	if s, ok := old["snapshotter"].(string); ok && s == r.opts.Snapshotter && str(images["snapshotter"], "overlayfs") != s {
		return fmt.Sprintf("[plugins.%q.containerd] sets snapshotter = %q", criV1, s)
	}
	return ""
}
