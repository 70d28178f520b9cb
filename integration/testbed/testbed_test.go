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

func TestContainerdConfig(t *testing.T) {
	for _, tc := range []struct {
		version int
		want    []string
		not     []string
	}{
		{2, []string{"version = 2", `plugins."io.containerd.internal.v1.opt"`, "[proxy_plugins.lazypull]", `address = "/l.sock"`},
			[]string{"exports", "unpack_config"}},
		{3, []string{"version = 3", "plugins.'io.containerd.internal.v1.opt'", `snapshotter = "overlayfs"`,
			`snapshotter = "lazypull"`, `exports = { root = "/lroot", enable_remote_snapshot_annotations = "true" }`,
			`"io.containerd.cri.v1.runtime"`}, nil},
	} {
		c := &Containerd{Flavour: Flavour{ConfigVersion: tc.version}, Dir: "/d", Root: "/d/root", State: "/d/state", Address: "/d/c.sock"}
		cfg := c.config(ContainerdOptions{LazypullSocket: "/l.sock", LazypullRoot: "/lroot"})
		for _, w := range tc.want {
			if !strings.Contains(cfg, w) {
				t.Errorf("version %d config lacks %s:\n%s", tc.version, w, cfg)
			}
		}
		for _, n := range tc.not {
			if strings.Contains(cfg, n) {
				t.Errorf("version %d config has %s:\n%s", tc.version, n, cfg)
			}
		}
	}
}
