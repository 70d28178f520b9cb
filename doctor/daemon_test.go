package doctor

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/plugins/snapshots/native"
	"google.golang.org/grpc"
)

// listen returns a unix listener on a socket under a short directory
// (socket paths are limited to 108 bytes).
func listen(t *testing.T) (net.Listener, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "lpdoc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	return l, sock
}

func TestDaemon(t *testing.T) {
	t.Run("answers", func(t *testing.T) {
		// containerd's own snapshotter behind the snapshots API, as
		// lazypulld serves it.
		l, sock := listen(t)
		sn, err := native.NewSnapshotter(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer()
		snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
		served := make(chan error, 1)
		go func() { served <- srv.Serve(l) }()
		defer func() { srv.Stop(); <-served; sn.Close() }()
		n := newNode(t)
		n.opts.Lazypull.Address = sock
		expect(t, n.run("2.4.2"), "lazypulld", OK, fmt.Sprintf("lazypulld on %s (pid %d, version ", sock, os.Getpid()), "")
	})
	t.Run("stale socket", func(t *testing.T) {
		l, sock := listen(t)
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()
		n := newNode(t)
		n.opts.Lazypull.Address = sock
		expect(t, n.run("2.4.2"), "lazypulld", Fail, "nothing listens on "+sock, "systemctl enable --now lazypulld")
	})
	t.Run("not the snapshots API", func(t *testing.T) {
		l, sock := listen(t)
		srv := &http.Server{Handler: http.NotFoundHandler()}
		served := make(chan error, 1)
		go func() { served <- srv.Serve(l) }()
		defer func() { srv.Close(); <-served }()
		n := newNode(t)
		n.opts.Lazypull.Address = sock
		expect(t, n.run("2.4.2"), "lazypulld", Fail, "does not answer the snapshots API", "is lazypulld")
	})
	t.Run("not a socket", func(t *testing.T) {
		n := newNode(t)
		n.opts.Lazypull.Address = n.write("file", "")
		expect(t, n.run("2.4.2"), "lazypulld", Fail, "is not a socket", "")
	})
	t.Run("missing", func(t *testing.T) {
		n := newNode(t)
		n.opts.Lazypull.Address = filepath.Join(n.dir, "none.sock")
		expect(t, n.run("2.4.2"), "lazypulld", Fail, "no socket at", "journalctl -u lazypulld")
	})
}

func TestLazypullConfig(t *testing.T) {
	n := newNode(t)
	n.opts.Lazypull.ConfigMissing = false
	n.opts.Lazypull.ConfigErr = fmt.Errorf("%s:3: unknown key \"roots\"", n.opts.Lazypull.ConfigPath)
	expect(t, n.run("2.4.2"), "lazypull.config", Fail, `lazypulld would not start: `+n.opts.Lazypull.ConfigPath+`:3: unknown key "roots"`, "config/example.toml")
	n.opts.Lazypull.ConfigErr, n.opts.Lazypull.Disabled = nil, true
	expect(t, n.run("2.4.2"), "lazypull.config", Fail, "disable = true", "remove disable = true")
	n.opts.Lazypull.Disabled = false
	n.opts.Lazypull.ConfigRemoved = []string{n.opts.Lazypull.ConfigPath + `:3: key "remote.parallelism" was removed and is ignored`}
	expect(t, n.run("2.4.2"), "lazypull.config.removed", Warn, `"remote.parallelism" was removed`, "remove the key from "+n.opts.Lazypull.ConfigPath)
}

func TestPassthrough(t *testing.T) {
	n := newNode(t)
	n.opts.Lazypull.Passthrough = false
	expect(t, n.run("2.4.2"), "kernel.passthrough", Skip, "off in lazypulld's config", "")
	for _, tc := range []struct {
		rel  string
		want bool
	}{{"6.9.0", true}, {"6.18.44-fc-v1300", true}, {"6.8.12-amd64", false}, {"5.15.0-91-generic", false}, {"7.0", true}, {"x", false}} {
		if got := releaseAtLeast(tc.rel, 6, 9); got != tc.want {
			t.Errorf("releaseAtLeast(%q, 6, 9) = %v", tc.rel, got)
		}
	}
}

func TestParseVersion(t *testing.T) {
	for in, want := range map[string]string{"1.6.20~ds1": "1.6.20", "v2.4.2": "2.4.2", "2.4.2+unknown": "2.4.2", "2.1.0-rc.1": "2.1.0", "1.7": "1.7.0"} {
		v, err := parseVersion(in)
		if err != nil || v.String() != want {
			t.Errorf("parseVersion(%q) = %v, %v; want %s", in, v, err, want)
		}
	}
	for _, in := range []string{"", "two", "1", "1.2.3.4"} {
		if _, err := parseVersion(in); err == nil {
			t.Errorf("parseVersion(%q) accepted", in)
		}
	}
}

// The JSON output is what tools read: every finding with its status as a
// word, the counts and ok.
func TestJSON(t *testing.T) {
	r := Report{Findings: []Finding{{Check: "a", Status: OK, Found: "fine"}, {Check: "b", Status: Fail, Found: "broken", Fix: "mend it"}, {Check: "c", Status: Warn, Found: "slow"}}}
	var buf bytes.Buffer
	if err := r.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var got struct {
		OK       bool `json:"ok"`
		Failures int  `json:"failures"`
		Warnings int  `json:"warnings"`
		Findings []struct{ Check, Status, Found, Fix string }
	}
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if got.OK || got.Failures != 1 || got.Warnings != 1 || len(got.Findings) != 3 || got.Findings[1].Status != "FAIL" || got.Findings[1].Fix != "mend it" {
		t.Errorf("got %+v from\n%s", got, buf.String())
	}
	var txt bytes.Buffer
	if err := r.WriteText(&txt, false); err != nil {
		t.Fatal(err)
	}
	want := "OK    a  fine\nFAIL  b  broken -> mend it\nWARN  c  slow\n1 failed, 1 warning: lazy pulls will not work until the failures are fixed\n"
	if txt.String() != want {
		t.Errorf("text:\n%s\nwant:\n%s", txt.String(), want)
	}
}
