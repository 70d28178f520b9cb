package doctor

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The README's containerd configurations, and any in contrib/, are what
// operators copy: doctor must find nothing in them that stops lazy pulls,
// for every containerd release they are meant for.
func TestDocumentedConfigs(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	configs := map[string]string{}
	block := regexp.MustCompile("(?s)```toml\n(.*?)```")
	for i, m := range block.FindAllStringSubmatch(string(readme), -1) {
		if strings.Contains(m[1], "[proxy_plugins.") && strings.Contains(m[1], "version =") {
			configs["README block "+string(rune('1'+i))] = m[1]
		}
	}
	contrib, _ := filepath.Glob("../contrib/*/*.toml")
	more, _ := filepath.Glob("../contrib/*/*/*.toml")
	for _, p := range append(contrib, more...) {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(data), "[proxy_plugins.") {
			configs[p] = string(data)
		}
	}
	if len(configs) < 2 {
		t.Fatalf("found %d containerd configurations in the README, want one for 1.x and one for 2.x", len(configs))
	}
	versions := map[string][]string{"2": {"1.6.20", "1.7.22"}, "3": {"2.0.0", "2.1.0", "2.4.2"}}
	for name, cfg := range configs {
		v := regexp.MustCompile(`(?m)^version = (\d)`).FindStringSubmatch(cfg)
		if v == nil || versions[v[1]] == nil {
			t.Errorf("%s: no version = 2 or 3", name)
			continue
		}
		for _, release := range versions[v[1]] {
			t.Run(name+"/containerd-"+release, func(t *testing.T) {
				n := newNode(t)
				cfg := cfg
				if release == "2.0.0" {
					// The line the 2.x drop-in says to uncomment on 2.0.
					cfg = strings.ReplaceAll(cfg, "# disable_snapshot_annotations = false", "disable_snapshot_annotations = false")
				}
				n.write("config.toml", cfg)
				r := n.run(release)
				if fs := containerdFailures(r); len(fs) > 0 {
					t.Errorf("failures:\n%s", text(r))
				}
				expect(t, r, "containerd.proxy_plugin", OK, `address = "/run/lazypull/lazypull.sock"`, "")
			})
		}
	}
}

func TestProxyPlugin(t *testing.T) {
	for _, tc := range []struct {
		name, version, config string
		status                Status
		found, fix            string
	}{
		{"missing 1.6", "1.6.20", "version = 2\n", Fail, "has no [proxy_plugins.lazypull]", `address = "/run/lazypull/lazypull.sock"`},
		{"missing 2.x", "2.4.2", "version = 3\n", Fail, "has no [proxy_plugins.lazypull]", `enable_remote_snapshot_annotations = "true"`},
		{"wrong address 1.6", "1.6.20", strings.Replace(goodV2, "/run/lazypull/lazypull.sock", "/run/other.sock", 1),
			Fail, `address = "/run/other.sock", but lazypulld listens on /run/lazypull/lazypull.sock`, `set address = "/run/lazypull/lazypull.sock" in [proxy_plugins.lazypull]`},
		{"wrong address 2.x", "2.4.2", strings.Replace(goodV3, "/run/lazypull/lazypull.sock", "/tmp/x.sock", 1),
			Fail, `"/tmp/x.sock", but lazypulld listens on`, `set address = "/run/lazypull/lazypull.sock"`},
		{"unix scheme", "2.4.2", strings.Replace(goodV3, `"/run/lazypull/lazypull.sock"`, `"unix:///run/lazypull/lazypull.sock"`, 1), OK, "", ""},
		{"wrong type", "1.6.20", strings.Replace(goodV2, `"snapshot"`, `"content"`, 1), Fail, `has type = "content"`, `set type = "snapshot"`},
		{"disabled", "2.4.2", "disabled_plugins = [\"io.containerd.snapshotter.v1.lazypull\"]\n" + goodV3,
			Fail, `disabled_plugins lists "io.containerd.snapshotter.v1.lazypull"`, "remove it"},
		{"other name", "2.4.2", strings.ReplaceAll(strings.ReplaceAll(goodV3, "proxy_plugins.lazypull", "proxy_plugins.esgz"), `snapshotter = "lazypull"`, `snapshotter = "esgz"`),
			Warn, `the proxy plugin "esgz"`, "--snapshotter esgz"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t)
			n.write("config.toml", tc.config)
			expect(t, n.run(tc.version), "containerd.proxy_plugin", tc.status, tc.found, tc.fix)
		})
	}
}

func TestConfigFile(t *testing.T) {
	t.Run("missing", func(t *testing.T) {
		expect(t, newNode(t).run("2.4.2"), "containerd.config", Fail, "does not exist", "README")
	})
	t.Run("syntax", func(t *testing.T) {
		n := newNode(t)
		n.write("config.toml", "version = 3\n[proxy_plugins.lazypull\n")
		expect(t, n.run("2.4.2"), "containerd.config", Fail, "line 2", "fix the file")
	})
	t.Run("version 3 on 1.6", func(t *testing.T) {
		n := newNode(t)
		n.write("config.toml", goodV3)
		expect(t, n.run("1.6.20"), "containerd.config", Fail, "reads versions up to 2", "version = 2")
	})
	t.Run("version 4 on 2.2", func(t *testing.T) {
		n := newNode(t)
		n.write("config.toml", strings.Replace(goodV3, "version = 3", "version = 4", 1))
		expect(t, n.run("2.2.1"), "containerd.config", Fail, "reads versions up to 3", "version = 3")
		expect(t, n.run("2.3.0"), "containerd.config", OK, "version = 4", "")
	})
	t.Run("version 2 on 2.x", func(t *testing.T) {
		n := newNode(t)
		n.write("config.toml", goodV2)
		expect(t, n.run("2.4.2"), "containerd.config", Warn, "migrates it at every start", "containerd config migrate")
	})
	t.Run("unknown key", func(t *testing.T) {
		n := newNode(t)
		n.write("config.toml", strings.Replace(goodV3, "[proxy_plugins.lazypull]", "[proxy_plugin.lazypull]", 1))
		r := n.run("2.4.2")
		expect(t, r, "containerd.config", Warn, `unknown key "proxy_plugin`, "")
		expect(t, r, "containerd.proxy_plugin", Fail, "has no [proxy_plugins.lazypull]", "")
	})
	t.Run("imports", func(t *testing.T) {
		// The proxy plugin in a drop-in, imported by a glob relative to
		// the main file (1.7 and later) or absolute.
		for _, v := range []string{"1.6.20", "1.7.22", "2.4.2"} {
			n := newNode(t)
			glob := "conf.d/*.toml"
			if v == "1.6.20" {
				glob = filepath.Join(n.dir, glob)
			}
			main, drop := "version = 2\nimports = [\""+glob+"\"]\n", goodV2
			if v == "2.4.2" {
				main, drop = "version = 3\nimports = [\""+glob+"\"]\n", goodV3
			}
			n.write("config.toml", main)
			p := n.write("conf.d/lazypull.toml", drop)
			r := n.run(v)
			expect(t, r, "containerd.config", OK, "imports "+p, "")
			expect(t, r, "containerd.proxy_plugin", OK, p, "")
		}
	})
	t.Run("relative glob on 1.6", func(t *testing.T) {
		// containerd 1.6 expands it in its working directory, not the
		// file's: the drop-in is not read.
		n := newNode(t)
		n.write("config.toml", "version = 2\nimports = [\"conf.d/*.toml\"]\n")
		n.write("conf.d/lazypull.toml", goodV2)
		r := n.run("1.6.20")
		expect(t, r, "containerd.config", Warn, `containerd 1.6 expands the relative import "conf.d/*.toml"`, "absolute paths")
		expect(t, r, "containerd.proxy_plugin", Fail, "has no [proxy_plugins.lazypull]", "")
	})
}

func TestExports(t *testing.T) {
	noAnn := strings.Replace(goodV3, `, enable_remote_snapshot_annotations = "true"`, "", 1)
	for _, tc := range []struct {
		name, version, config string
		status                Status
		found, fix            string
	}{
		{"1.6 ignores", "1.6.20", strings.Replace(goodV3, "version = 3", "version = 2", 1), Warn, "ignores (they exist from 1.7.16)", ""},
		{"1.6 none", "1.6.20", goodV2, Skip, "has no proxy plugin exports", ""},
		{"no annotations 2.1", "2.1.0", noAnn, Fail, "no enable_remote_snapshot_annotations", `enable_remote_snapshot_annotations = "true"`},
		{"annotations as bool", "2.4.2", strings.Replace(goodV3, `enable_remote_snapshot_annotations = "true"`, `enable_remote_snapshot_annotations = "yes"`, 1), Fail, "no enable_remote_snapshot_annotations", "quoted"},
		{"no annotations 2.0", "2.0.2", noAnn, Warn, "never passes layer annotations", "lazypull pull"},
		{"no root 1.7", "1.7.22", strings.Replace(goodV2, "type", "exports = { enable_remote_snapshot_annotations = \"true\" }\n  type", 1), Warn, "no exports.root", `root = "/var/lib/lazypull"`},
		{"other root", "2.4.2", strings.Replace(goodV3, `root = "/var/lib/lazypull"`, `root = "/srv/lp"`, 1), Warn, `exports.root is "/srv/lp"`, `root = "/var/lib/lazypull"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t)
			n.write("config.toml", tc.config)
			expect(t, n.run(tc.version), "containerd.exports", tc.status, tc.found, tc.fix)
		})
	}
}

func TestUnpackConfig(t *testing.T) {
	entry := "[[plugins.'io.containerd.transfer.v1.local'.unpack_config]]\n  platform = %q\n  snapshotter = %q\n"
	proxy := goodV3[:strings.Index(goodV3, "[[")]
	for _, tc := range []struct {
		name, config string
		status       Status
		found, fix   string
	}{
		{"none", proxy, Fail, "unpacks only into overlayfs", `snapshotter = "lazypull"`},
		{"without overlayfs", proxy + fmt.Sprintf(entry, "linux/amd64", "lazypull"), Warn, "does not list overlayfs", `snapshotter = "overlayfs"`},
		{"other OS", proxy + fmt.Sprintf(entry, "linux/amd64", "overlayfs") + fmt.Sprintf(entry, "windows/amd64", "lazypull"), Fail, `has platform "windows/amd64", which does not match this machine`, `set platform = "linux/`},
		{"bad platform", proxy + fmt.Sprintf(entry, "linux/amd64", "overlayfs") + fmt.Sprintf(entry, "linux/x/y/z", "lazypull"), Fail, "does not parse", "fix the platform"},
		{"ok", goodV3, OK, "lists lazypull and overlayfs", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t)
			n.write("config.toml", tc.config)
			expect(t, n.run("2.4.2"), "containerd.unpack_config", tc.status, tc.found, tc.fix)
		})
	}
}
