package doctor

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Defaults of lazypulld's configuration, as the README's snippets use them.
const (
	testSocket = "/run/lazypull/lazypull.sock"
	testRoot   = "/var/lib/lazypull"
)

// node is a node's configuration files in a temporary directory.
type node struct {
	t    *testing.T
	dir  string
	opts Options
}

func newNode(t *testing.T) *node {
	t.Helper()
	dir := t.TempDir()
	return &node{t: t, dir: dir, opts: Options{
		ContainerdConfig: filepath.Join(dir, "config.toml"),
		HostsDir:         filepath.Join(dir, "certs.d"),
		Lazypull: Lazypull{
			ConfigPath:    filepath.Join(dir, "lazypull.toml"),
			ConfigMissing: true,
			Address:       testSocket,
			Root:          testRoot,
			HostsDir:      filepath.Join(dir, "certs.d"),
			CacheDir:      filepath.Join(dir, "cache"),
			Passthrough:   true,
		},
		Env: []string{}, // none of this machine's credentials
	}}
}

// write writes a file under the node's directory and returns its path.
func (n *node) write(name, content string) string {
	n.t.Helper()
	p := filepath.Join(n.dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		n.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		n.t.Fatal(err)
	}
	return p
}

// run runs the checks as for containerd version.
func (n *node) run(version string) Report {
	n.t.Helper()
	opts := n.opts
	opts.ContainerdVersion = version
	return Run(context.Background(), opts)
}

// find returns the finding of check, failing the test without one.
func find(t *testing.T, r Report, check string) Finding {
	t.Helper()
	for _, f := range r.Findings {
		if f.Check == check {
			return f
		}
	}
	t.Fatalf("no finding %q in:\n%s", check, text(r))
	return Finding{}
}

// expect checks the status of check and that found and fix contain the
// given fragments.
func expect(t *testing.T, r Report, check string, s Status, found, fix string) {
	t.Helper()
	f := find(t, r, check)
	if f.Status != s || !strings.Contains(f.Found, found) || !strings.Contains(f.Fix, fix) {
		t.Errorf("%s: got %s %q -> %q; want %s, found containing %q, fix containing %q\nreport:\n%s",
			check, f.Status, f.Found, f.Fix, s, found, fix, text(r))
	}
}

func text(r Report) string {
	var b strings.Builder
	_ = r.WriteText(&b, false)
	return b.String()
}

// containerdFailures returns the failed findings about containerd's
// configuration.
func containerdFailures(r Report) []Finding {
	var out []Finding
	for _, f := range r.Findings {
		if f.Status == Fail && strings.HasPrefix(f.Check, "containerd.") && f.Check != "containerd.running" {
			out = append(out, f)
		}
	}
	return out
}

// Configurations as the README gives them.
const (
	goodV2 = `version = 2

[proxy_plugins.lazypull]
  type = "snapshot"
  address = "/run/lazypull/lazypull.sock"
`
	goodV3 = `version = 3

[proxy_plugins.lazypull]
  type = "snapshot"
  address = "/run/lazypull/lazypull.sock"
  exports = { root = "/var/lib/lazypull", enable_remote_snapshot_annotations = "true" }

[[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
  platform = "linux/amd64"
  snapshotter = "overlayfs"
  differ = "walking"

[[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
  platform = "linux/amd64"
  snapshotter = "lazypull"
  differ = "walking"
`
)
