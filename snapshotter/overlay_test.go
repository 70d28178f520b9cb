package snapshotter

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"golang.org/x/sys/unix"
)

// TestOverlayRefusesImageRedirects commits layers the way containerd
// unpacks a layer pulled the normal way: straight into the snapshot's
// directory, with the xattrs the layer's tar holds, overlayfs's own
// included. A view of them must not show one directory's or file's
// content under another's name, as overlayfs would if it followed the
// image's redirect and metacopy xattrs.
func TestOverlayRefusesImageRedirects(t *testing.T) {
	requiresRoot(t)
	ctx := context.Background()
	sn, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	unpack := func(name, parent string, fn func(dir string)) {
		t.Helper()
		ms, err := sn.Prepare(ctx, "extract-"+name, parent)
		if err != nil {
			t.Fatal(err)
		}
		dir := ms[0].Source // a bind mount of the directory
		for _, o := range ms[0].Options {
			if d, ok := strings.CutPrefix(o, "upperdir="); ok {
				dir = d
			}
		}
		fn(dir)
		if err := sn.Commit(ctx, name, "extract-"+name); err != nil {
			t.Fatal(err)
		}
	}
	write := func(p, data string, xattrs ...string) {
		t.Helper()
		if data == "" {
			err = os.Mkdir(p, 0o755)
		} else {
			err = os.WriteFile(p, []byte(data), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(xattrs); i += 2 {
			if err := unix.Lsetxattr(p, xattrs[i], []byte(xattrs[i+1]), 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	unpack("lower", "", func(dir string) {
		write(filepath.Join(dir, "secret"), "")
		write(filepath.Join(dir, "secret/key"), "SECRET")
		write(filepath.Join(dir, "pub"), "")
		write(filepath.Join(dir, "pub/f"), "public")
	})
	unpack("upper", "lower", func(dir string) {
		write(filepath.Join(dir, "pub"), "", "trusted.overlay.redirect", "/secret")
		write(filepath.Join(dir, "pub/g"), "g")
		write(filepath.Join(dir, "meta"), "upper", "trusted.overlay.metacopy", "", "trusted.overlay.redirect", "/secret/key")
	})
	ms, err := sn.View(ctx, "view", "upper")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range overlayOptions("/sys/module/overlay/parameters") {
		if !slices.Contains(ms[0].Options, want) {
			t.Errorf("overlay options %q lack %q", ms[0].Options, want)
		}
	}
	if err := mount.WithTempMount(ctx, ms, func(root string) error {
		if entries, err := os.ReadDir(filepath.Join(root, "pub")); err == nil {
			for _, e := range entries {
				if e.Name() == "key" {
					t.Errorf("pub lists %q: overlayfs followed the image's redirect", e.Name())
				}
			}
		}
		if b, err := os.ReadFile(filepath.Join(root, "meta")); err == nil && string(b) != "upper" {
			t.Errorf("meta reads %q: overlayfs followed the image's metacopy redirect", b)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
