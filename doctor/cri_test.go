package doctor

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	toml "github.com/pelletier/go-toml/v2"
)

const (
	criV1Lazy = `
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "lazypull"
  disable_snapshot_annotations = false
`
	criV1Runtimes = criV1Lazy + `
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
`
	criV3Lazy = `
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "lazypull"
`
)

func TestCRI(t *testing.T) {
	v1Section := `[plugins."io.containerd.grpc.v1.cri".containerd]`
	v3Section := `[plugins.'io.containerd.cri.v1.images']`
	for _, tc := range []struct {
		name, version, config string
		cri                   bool
		status                Status
		found, fix            string
	}{
		{"1.6 default", "1.6.20", goodV2, false, Warn, `go to snapshotter "overlayfs"`, `snapshotter = "lazypull" and disable_snapshot_annotations = false in ` + v1Section},
		{"1.6 default kubernetes", "1.6.20", goodV2, true, Fail, `go to snapshotter "overlayfs"`, v1Section},
		{"1.6 annotations off", "1.6.20", goodV2 + strings.Replace(criV1Lazy, "= false", "= true", 1), false, Fail, "disable_snapshot_annotations is true", "disable_snapshot_annotations = false in " + v1Section},
		{"1.6 ok", "1.6.20", goodV2 + criV1Lazy, false, OK, "with snapshot annotations", ""},
		{"1.6 disabled", "1.6.20", "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n" + goodV2, false, Skip, "disabled", ""},
		{"2.x transfer", "2.4.2", goodV3 + criV3Lazy, false, OK, "through the transfer service", ""},
		{"2.x transfer without unpack", "2.4.2", goodV3[:strings.Index(goodV3, "[[")] + criV3Lazy, false, Fail, "unpack_config does not list lazypull", "disable_snapshot_annotations = false in " + v3Section},
		{"2.x transfer without annotations", "2.4.2", strings.Replace(goodV3, `, enable_remote_snapshot_annotations = "true"`, "", 1) + criV3Lazy, false, Fail, "exports enable_remote_snapshot_annotations", "local pull path"},
		{"2.x local", "2.4.2", goodV3 + criV3Lazy + "  disable_snapshot_annotations = false\n", false, OK, "through the local pull path (disable_snapshot_annotations = false", ""},
		{"2.x local for mirrors", "2.4.2", goodV3 + criV3Lazy + "[plugins.'io.containerd.cri.v1.images'.registry.mirrors.'docker.io']\n  endpoint = [\"https://m\"]\n", false, Fail, "local pull path (registry.mirrors is set)", "disable_snapshot_annotations = false"},
		{"2.0 local always", "2.0.2", goodV3 + criV3Lazy, false, Fail, "2.0.2's CRI always pulls that way", "disable_snapshot_annotations = false"},
		{"2.x version 2 without runtimes", "2.4.2", goodV2 + criV1Lazy, false, Fail, "which containerd 2.4.2 ignores", `snapshotter = "lazypull" and disable_snapshot_annotations = false in ` + v3Section},
		{"2.x version 2 with runtimes", "2.4.2", goodV2 + criV1Runtimes, false, OK, "local pull path", ""},
		{"2.x disabled", "2.4.2", "disabled_plugins = [\"io.containerd.cri.v1.images\"]\n" + goodV3, true, Fail, "disabled", "remove"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t)
			n.opts.CRI = tc.cri
			n.write("config.toml", tc.config)
			expect(t, n.run(tc.version), "containerd.cri", tc.status, tc.found, tc.fix)
		})
	}
}

// The CRI of 2.1+ pulls through the transfer service, which reads its
// config_path as one directory: the default list reads none.
func TestCRIHostsDir(t *testing.T) {
	n := newNode(t)
	n.write("config.toml", goodV3+criV3Lazy)
	expect(t, n.run("2.4.2"), "hosts_dir", Warn, `takes config_path "/etc/containerd/certs.d:/etc/docker/certs.d" as one directory`,
		`set config_path = "`+n.opts.Lazypull.HostsDir+`" (one directory)`)

	n.write("config.toml", goodV3+criV3Lazy+"  disable_snapshot_annotations = false\n")
	expect(t, n.run("2.4.2"), "hosts_dir", Warn, "the CRI reads hosts.toml from /etc/containerd/certs.d:/etc/docker/certs.d, lazypulld from "+n.opts.Lazypull.HostsDir,
		`config_path to "`+n.opts.Lazypull.HostsDir+`"`)

	n.write("config.toml", goodV3+criV3Lazy+"  disable_snapshot_annotations = false\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = "+
		`"`+n.opts.Lazypull.HostsDir+`"`+"\n")
	expect(t, n.run("2.4.2"), "hosts_dir", OK, "the CRI "+n.opts.Lazypull.HostsDir, "")
}

// doctor reads containerd's configuration as containerd does: what it
// finds in a set of files (imports, version 2 files on 2.x, drop-ins that
// replace or merge plugin tables) must be what `containerd config dump`
// prints, for Debian's 1.6 and for 2.4.2.
func TestConfigAsContainerdReadsIt(t *testing.T) {
	bins := map[string]string{"1.6.20": "/usr/bin/containerd", "2.4.2": containerd2Binary()}
	drop := "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  disable_snapshot_annotations = false\n" +
		"[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/lp-test/certs.d\"\n"
	cases := []struct {
		name     string
		versions []string
		files    map[string]string
	}{
		{"drop-in replaces or merges", []string{"1.6.20", "2.4.2"}, map[string]string{
			"config.toml": goodV2 + "imports = [\"drop.toml\"]\n" + strings.Replace(criV1Lazy, "= false", "= true", 1), "drop.toml": drop}},
		{"version 2 with runtimes", []string{"1.6.20", "2.4.2"}, map[string]string{"config.toml": goodV2 + criV1Runtimes}},
		{"version 2 without runtimes", []string{"2.4.2"}, map[string]string{"config.toml": goodV2 + criV1Lazy}},
		{"relative glob", []string{"1.6.20", "2.4.2"}, map[string]string{
			"config.toml": "version = 2\nimports = [\"conf.d/*.toml\"]\n", "conf.d/proxy.toml": goodV2}},
		{"version 3 drop-ins", []string{"2.4.2"}, map[string]string{
			"config.toml":        "version = 3\nimports = [\"conf.d/*.toml\"]\n" + criV3Lazy,
			"conf.d/a.toml":      "version = 3\n[plugins.'io.containerd.cri.v1.images']\n  disable_snapshot_annotations = false\n",
			"conf.d/b.toml":      "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = \"/etc/lp-test/certs.d\"\n",
			"conf.d/proxy.toml":  goodV3,
			"conf.d/ignored.txt": "version = 3\n[plugins.'io.containerd.cri.v1.images']\n  snapshotter = \"native\"\n",
		}},
	}
	for _, tc := range cases {
		for _, v := range tc.versions {
			t.Run(tc.name+"/"+v, func(t *testing.T) {
				bin := bins[v]
				if _, err := os.Stat(bin); err != nil {
					t.Skipf("%s not installed (make deps): %v", bin, err)
				}
				n := newNode(t)
				for name, content := range tc.files {
					n.write(name, content)
				}
				cmd := exec.Command(bin, "--config", n.opts.ContainerdConfig, "config", "dump")
				cmd.Dir = "/" // as a service
				out, err := cmd.Output()
				if err != nil {
					t.Fatalf("containerd config dump: %v", err)
				}
				want := criFromDump(t, out, v)
				r := &run{opts: n.opts}
				r.version, _ = parseVersion(v)
				r.loadContainerdConfig()
				if r.cfg == nil {
					t.Fatalf("not loaded:\n%s", text(r.report))
				}
				if got := criFromDoctor(r); got != want {
					t.Errorf("doctor reads %+v, containerd %+v", got, want)
				}
			})
		}
	}
}

// criSettings are the CRI settings the checks depend on.
type criSettings struct {
	Snapshotter, ConfigPath, ProxyAddress string
	DisableAnnotations                    bool
}

func criFromDoctor(r *run) criSettings {
	t, reg := r.cfg.pluginTable(criV1, "containerd"), r.cfg.pluginTable(criV1, "registry")
	if r.version.Major >= 2 {
		t, reg = r.cfg.pluginTable(criImagesV2), r.cfg.pluginTable(criImagesV2, "registry")
	}
	return criSettings{str(t["snapshotter"], "overlayfs"), str(reg["config_path"], ""), r.cfg.Proxy["lazypull"].Address,
		boolean(t["disable_snapshot_annotations"], true)}
}

func criFromDump(t *testing.T, dump []byte, version string) criSettings {
	var c struct {
		Plugins map[string]map[string]any `toml:"plugins"`
		Proxy   map[string]struct {
			Address string `toml:"address"`
		} `toml:"proxy_plugins"`
	}
	if err := toml.NewDecoder(bytes.NewReader(dump)).Decode(&c); err != nil {
		t.Fatalf("decode dump: %v\n%s", err, dump)
	}
	p := c.Plugins[criImagesV2]
	tbl := p
	if strings.HasPrefix(version, "1.") {
		p = c.Plugins[criV1]
		tbl, _ = p["containerd"].(map[string]any)
	}
	reg, _ := p["registry"].(map[string]any)
	return criSettings{str(tbl["snapshotter"], ""), str(reg["config_path"], ""), c.Proxy["lazypull"].Address,
		boolean(tbl["disable_snapshot_annotations"], false)}
}

// containerd2Binary is where hack/build-containerd2.sh puts containerd 2.
func containerd2Binary() string {
	if d := os.Getenv("LAZYPULL_CONTAINERD2_DIR"); d != "" {
		return filepath.Join(d, "containerd")
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "lazypull", "containerd-v2.4.2", "bin", "containerd")
}
