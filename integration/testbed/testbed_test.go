package testbed

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/integration/testimage"
)

// TestBedWithOverlayfs checks the bed itself, without lazypulld: for each
// containerd flavour an image is pushed, pulled into overlayfs and run.
func TestBedWithOverlayfs(t *testing.T) {
	RequireRoot(t)
	flavours, err := Flavours()
	if err != nil {
		t.Fatal(err)
	}
	entry := filepath.Join(t.TempDir(), "hashfiles")
	build := exec.Command("go", "build", "-o", entry, "../cmd/hashfiles")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build entrypoint: %v\n%s", err, out)
	}
	bin, err := os.ReadFile(entry)
	if err != nil {
		t.Fatal(err)
	}
	layers := []testimage.Layer{{Entries: []testimage.Entry{
		testimage.File("entry", 0o755, bin),
		testimage.File("hello", 0o644, []byte("abc")),
	}}}
	img, err := testimage.Image(layers, []string{"/entry"})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range flavours {
		t.Run("containerd-"+f.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			bed := New(t, Options{Flavour: f})
			ref := bed.Registry.Ref("testbed/smoke:1")
			if _, err := testimage.Push(ctx, ref, img); err != nil {
				t.Fatal(err)
			}
			if err := bed.Containerd.Pull(ctx, "overlayfs", ref); err != nil {
				t.Fatal(err)
			}
			reqs, err := bed.Registry.Requests()
			if err != nil {
				t.Fatal(err)
			}
			var manifestGets int
			for _, r := range reqs {
				if r.Method == "GET" && strings.Contains(r.Path, "/manifests/") && r.Status == 200 && strings.HasPrefix(r.Agent, "containerd") {
					manifestGets++
				}
			}
			if manifestGets == 0 {
				t.Errorf("the registry's access log shows no manifest GET by containerd: %+v", reqs)
			}
			out, err := bed.Containerd.Run(ctx, "overlayfs", ref, "smoke", "/entry", "/hello")
			if err != nil {
				t.Fatal(err)
			}
			if want := "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  /hello\n"; out != want {
				t.Errorf("container printed %q, want %q", out, want)
			}
			if _, err := bed.Containerd.Ctr(ctx, "no-such-command"); err == nil || !strings.Contains(err.Error(), "no-such-command") {
				t.Errorf("a failing ctr call returned %v", err)
			}
		})
	}
}

func TestUnmountUnderStackedMounts(t *testing.T) {
	RequireRoot(t)
	dir := Dir(t, "umount")
	inner := filepath.Join(dir, "a", "b")
	if err := os.MkdirAll(inner, 0o755); err != nil {
		t.Fatal(err)
	}
	mounts := []string{filepath.Join(dir, "a"), filepath.Join(dir, "a"), inner}
	for i, mp := range mounts {
		if i == 2 {
			if err := os.MkdirAll(mp, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := unix.Mount("tmpfs", mp, "tmpfs", 0, ""); err != nil {
			t.Fatal(err)
		}
	}
	// Keep the innermost mount busy: a plain unmount fails, the lazy one works.
	f, err := os.Open(inner)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got, _ := MountsUnder(dir); len(got) != 3 {
		t.Fatalf("MountsUnder = %v, want 3 mounts", got)
	}
	if err := UnmountUnder(dir); err != nil {
		t.Fatal(err)
	}
	if got, _ := MountsUnder(dir); len(got) != 0 {
		t.Fatalf("left mounted: %v", got)
	}
}

// TestContainerdConfig checks that the bed configures lazypull with the
// files of contrib/containerd: imported as a drop-in on 2.x, merged into
// config.toml on 1.x, with the bed's paths in place of the defaults.
func TestContainerdConfig(t *testing.T) {
	for _, tc := range []struct {
		version    int
		want, drop []string
	}{
		{2, []string{"version = 2", `plugins."io.containerd.internal.v1.opt"`, "[proxy_plugins.lazypull]", `address = "/l.sock"`,
			`snapshotter = "lazypull"`, `disable_snapshot_annotations = false`, `config_path = "/hosts"`}, nil},
		{3, []string{"version = 3", "plugins.'io.containerd.internal.v1.opt'", `imports = ["/d/lazypull.toml"]`,
			`"io.containerd.cri.v1.runtime"`},
			[]string{"version = 3", `snapshotter = "overlayfs"`, `snapshotter = "lazypull"`, `address = "/l.sock"`,
				`exports = { root = "/lroot", enable_remote_snapshot_annotations = "true" }`, `config_path = "/hosts"`}},
	} {
		dir := t.TempDir()
		c := &Containerd{Flavour: Flavour{ConfigVersion: tc.version}, Dir: dir, Root: "/d/root", State: "/d/state",
			Address: "/d/c.sock", ConfigPath: filepath.Join(dir, "config.toml")}
		opts := ContainerdOptions{LazypullSocket: "/l.sock", LazypullRoot: "/lroot", HostsDir: "/hosts"}
		if err := c.writeConfig(opts); err != nil {
			t.Fatal(err)
		}
		check := func(path string, want []string) {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range want {
				if !strings.Contains(strings.ReplaceAll(string(b), dir, "/d"), w) {
					t.Errorf("version %d: %s lacks %s:\n%s", tc.version, filepath.Base(path), w, b)
				}
			}
			for _, d := range []string{"/run/lazypull/", "/var/lib/lazypull", "/etc/containerd/certs.d"} {
				if strings.Contains(string(b), d) {
					t.Errorf("version %d: %s still names %s", tc.version, filepath.Base(path), d)
				}
			}
		}
		check(c.ConfigPath, tc.want)
		if tc.drop != nil {
			check(c.dropInPath(), tc.drop)
		}
	}
}
