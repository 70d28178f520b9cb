package doctor

import (
	"path/filepath"
	"testing"
)

func TestHosts(t *testing.T) {
	plain := func(host string) string {
		return "server = \"http://" + host + "\"\n[host.\"http://" + host + "\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
	}
	for _, tc := range []struct {
		name  string
		files map[string]string // under the node's directory
		// lazypullDir is lazypulld's hosts_dir under the node's
		// directory; the clients' is certs.d.
		lazypullDir string
		images      []string
		check       string
		status      Status
		found, fix  string
	}{
		{"same plain-http host", map[string]string{"certs.d/127.0.0.1:5000/hosts.toml": plain("127.0.0.1:5000")}, "certs.d", nil,
			"hosts 127.0.0.1:5000", OK, "pulled from http://127.0.0.1:5000/v2", ""},
		{"port directory", map[string]string{"certs.d/registry.local_5000_/hosts.toml": plain("registry.local:5000")}, "certs.d", nil,
			"hosts registry.local:5000", OK, "http://registry.local:5000/v2", ""},
		{"plain http only for containerd", map[string]string{"certs.d/registry.local:5000/hosts.toml": plain("registry.local:5000"), "lp/.keep": ""}, "lp", nil,
			"hosts registry.local:5000", Fail, "lazypulld from https://registry.local:5000/v2", `hosts_dir = "CERTS"`},
		{"hosts.toml that does not parse", map[string]string{"certs.d/registry.local/hosts.toml": "server = \"http://registry.local\"\n[host.\"x\"\n"}, "certs.d", nil,
			"hosts registry.local", Fail, "lazypulld cannot use its hosts.toml for registry.local", "fix the file"},
		{"bad capability", map[string]string{"certs.d/registry.local/hosts.toml": "[host.\"https://m.local\"]\n  capabilities = [\"pul\"]\n"}, "certs.d", nil,
			"hosts registry.local", Fail, "unknown capability", ""},
		{"local registry without hosts.toml", nil, "certs.d", []string{"127.0.0.1:5000/app:1"},
			"hosts 127.0.0.1:5000", Warn, "containerd falls back to plain HTTP for a local registry, lazypulld does not", `server = "http://127.0.0.1:5000"`},
		{"mirror only for containerd", map[string]string{"certs.d/docker.io/hosts.toml": "server = \"https://registry-1.docker.io\"\n[host.\"https://mirror.local\"]\n  capabilities = [\"pull\", \"resolve\"]\n", "lp/.keep": ""}, "lp", nil,
			"hosts docker.io", Warn, "other hosts (mirrors)", `hosts_dir = "CERTS"`},
		{"registry without hosts.toml", nil, "certs.d", []string{"registry.example.com/app:1"},
			"hosts registry.example.com", OK, "https://registry.example.com/v2 ((none))", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t)
			n.write("config.toml", goodV3)
			for name, content := range tc.files {
				n.write(name, content)
			}
			n.opts.Lazypull.HostsDir = filepath.Join(n.dir, tc.lazypullDir)
			n.opts.Images = tc.images
			fix := tc.fix
			if fix == `hosts_dir = "CERTS"` {
				fix = `hosts_dir = "` + filepath.Join(n.dir, "certs.d") + `"`
			}
			expect(t, n.run("2.4.2"), tc.check, tc.status, tc.found, fix)
		})
	}
}

// containerd 1.x's CRI reads no hosts.toml unless config_path is set: a
// registry lazypulld knows as plain HTTP is HTTPS to the CRI.
func TestHostsCRIWithoutConfigPath(t *testing.T) {
	n := newNode(t)
	n.write("config.toml", goodV2+criV1Lazy)
	n.write("certs.d/registry.local:5000/hosts.toml", "server = \"http://registry.local:5000\"\n")
	n.opts.HostsDir = ""
	r := n.run("1.6.20")
	expect(t, r, "hosts_dir", Warn, "the CRI reads hosts.toml from (none), lazypulld from "+n.opts.Lazypull.HostsDir, `config_path to "`+n.opts.Lazypull.HostsDir+`"`)
	expect(t, r, "hosts registry.local:5000", Fail, "the CRI pulls registry.local:5000 from https://registry.local:5000/v2 ((none)), lazypulld from http://registry.local:5000/v2",
		"make containerd read the same hosts directory, "+n.opts.Lazypull.HostsDir)
}
