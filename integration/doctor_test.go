package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lazypull/lazypull/integration/testbed"
)

// doctorReport is `lazypull doctor --json`'s output.
type doctorReport struct {
	OK       bool `json:"ok"`
	Findings []struct {
		Check, Status, Found, Fix string
	} `json:"findings"`
}

func (r doctorReport) String() string {
	var b strings.Builder
	for _, f := range r.Findings {
		b.WriteString(f.Status + "  " + f.Check + "  " + f.Found)
		if f.Fix != "" {
			b.WriteString(" -> " + f.Fix)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// expect fails t unless check has status and its found and fix texts
// contain the fragments.
func (r doctorReport) expect(t *testing.T, check, status, found, fix string) {
	t.Helper()
	for _, f := range r.Findings {
		if f.Check == check {
			if f.Status != status || !strings.Contains(f.Found, found) || !strings.Contains(f.Fix, fix) {
				t.Errorf("%s: got %s %q -> %q; want %s with %q -> %q\n%s", check, f.Status, f.Found, f.Fix, status, found, fix, r)
			}
			return
		}
	}
	t.Errorf("no finding %s:\n%s", check, r)
}

// runDoctor runs `lazypull doctor --json` against a test bed's lazypulld
// and the containerd ctrd, and returns its exit status and report.
func runDoctor(t *testing.T, ctx context.Context, lb *lazyBed, ctrd *testbed.Containerd, args ...string) (int, doctorReport) {
	t.Helper()
	l := lb.Lazypulld
	full := append([]string{"doctor", "--json", "--config", l.ConfigPath, "--address", l.Socket, "--root", l.Root,
		"--containerd-config", ctrd.ConfigPath, "--containerd-address", ctrd.Address,
		"--containerd-binary", filepath.Join(ctrd.Flavour.BinDir, "containerd"), "--hosts-dir", lb.HostsDir}, args...)
	cmd := exec.CommandContext(ctx, lazypullBin, full...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("lazypull doctor: %v\n%s", err, stderr.String())
	}
	var r doctorReport
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("lazypull doctor printed no JSON report (%v):\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	if r.OK != (code == 0) {
		t.Errorf("exit status %d with ok = %v", code, r.OK)
	}
	return code, r
}

// TestDoctor runs `lazypull doctor` on the test bed's node: containerd 1.6
// or 2.4.2 configured for lazypulld, which has pulled an image lazily. All
// is right, and doctor says so; then lazypulld goes down, and a containerd
// talks to the wrong socket, and doctor fails with what to change.
func TestDoctor(t *testing.T) {
	forEachFlavour(t, func(t *testing.T, f testbed.Flavour) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		lb := newLazyBed(t, f, lazyBedOptions{})
		src, img := pushDefaultImage(t, ctx, lb.Registry)
		ref := convertImage(t, ctx, src, lb.Registry.Ref("lazypull/testimage:esgz"))
		pullLazily(t, ctx, lb, ref)
		sock := lb.Lazypulld.Socket

		code, r := runDoctor(t, ctx, lb, lb.Containerd, "--image", ref, "--check-registry")
		if code != 0 {
			t.Errorf("exit %d on a node where all is right:\n%s", code, r)
		}
		r.expect(t, "containerd.version", "OK", "containerd "+map[string]string{"1.6": "1.6.", "2.x": "2.4.2"}[f.Name], "")
		r.expect(t, "containerd.proxy_plugin", "OK", `address = "`+sock+`"`, "")
		r.expect(t, "containerd.running", "OK", `snapshotter "lazypull" on `+sock, "")
		r.expect(t, "containerd.cri", "SKIP", "disabled", "") // the test bed runs no CRI
		r.expect(t, "lazypulld", "OK", "lazypulld on "+sock+" (pid ", "")
		r.expect(t, "hosts "+lb.Registry.Host, "OK", "http://"+lb.Registry.Host+"/v2", "")
		r.expect(t, "registry "+ref, "OK", fmt.Sprintf("%d of %d layers carry containerd.io/snapshot/stargz/toc.digest", len(img.chainIDs), len(img.chainIDs)), "")
		if f.ConfigVersion >= 3 {
			r.expect(t, "containerd.exports", "OK", `enable_remote_snapshot_annotations = "true"`, "")
			r.expect(t, "containerd.unpack_config", "OK", "lists lazypull and overlayfs", "")
		}
		for _, fd := range r.Findings {
			if fd.Status == "FAIL" {
				t.Errorf("FAIL %s: %s", fd.Check, fd.Found)
			}
		}

		// lazypulld down: doctor fails, says where to look, and so does
		// containerd's view (its Walk reaches lazypulld for each
		// snapshot).
		if err := lb.Lazypulld.Stop(); err != nil {
			t.Fatal(err)
		}
		code, r = runDoctor(t, ctx, lb, lb.Containerd)
		if code != 1 {
			t.Errorf("exit %d with lazypulld down, want 1:\n%s", code, r)
		}
		r.expect(t, "lazypulld", "FAIL", "no socket at "+sock+": lazypulld is not running", "systemctl enable --now lazypulld")
		r.expect(t, "containerd.running", "FAIL", `containerd cannot list "lazypull"'s snapshots`, "lazypulld serves on "+sock)
		if err := lb.Lazypulld.Start(t); err != nil {
			t.Fatal(err)
		}
		if code, r = runDoctor(t, ctx, lb, lb.Containerd); code != 0 {
			t.Errorf("exit %d once lazypulld is back:\n%s", code, r)
		}

		// A containerd whose proxy plugin names another socket.
		wrong := filepath.Join(lb.Lazypulld.Dir, "wrong.sock")
		other := testbed.StartContainerd(t, testbed.ContainerdOptions{Flavour: f, LazypullSocket: wrong, LazypullRoot: lb.Lazypulld.Root})
		code, r = runDoctor(t, ctx, lb, other)
		if code != 1 {
			t.Errorf("exit %d with the wrong proxy address, want 1:\n%s", code, r)
		}
		r.expect(t, "containerd.proxy_plugin", "FAIL", `address = "`+wrong+`", but lazypulld listens on `+sock,
			`set address = "`+sock+`" in [proxy_plugins.lazypull] of `+other.LazypullConfigPath())
		r.expect(t, "containerd.running", "FAIL", "sends \"lazypull\"'s calls to "+wrong, "restart containerd")
		r.expect(t, "lazypulld", "OK", "", "")
	})
}
