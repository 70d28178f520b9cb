package fs

import (
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestOverlay mounts overlayfs over two layers and checks that the upper
// layer's whiteout hides a file of the lower one and its opaque directory
// hides the lower directory's content.
func TestOverlay(t *testing.T) {
	lower := buildLayer(t, []tarEntry{
		dir("a/", 0o755), file("a/x", 0o644, []byte("x")),
		dir("b/", 0o755), file("b/y", 0o644, []byte("y")), file("b/keep", 0o644, []byte("keep")),
		file("c", 0o644, []byte("c")),
		dir("d/", 0o755), file("d/e", 0o644, []byte("e")),
	})
	upper := buildLayer(t, []tarEntry{
		file(".wh.c", 0o644, nil),
		dir("a/", 0o755), file("a/new", 0o644, []byte("new")),
		dir("b/", 0o755), file("b/.wh..wh..opq", 0o644, nil), file("b/z", 0o644, []byte("z")),
		dir("d/", 0o755), file("d/.wh.e", 0o644, nil),
	})
	f := newFS(t, newOpener(lower, upper))
	lowerMP, upperMP := mountLayer(t, f, lower), mountLayer(t, f, upper)

	merged := mountpoint(t)
	if err := unix.Mount("overlay", merged, "overlay", unix.MS_RDONLY, "lowerdir="+upperMP+":"+lowerMP); err != nil {
		t.Fatalf("mount overlayfs over the layers: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(merged, 0); err != nil {
			t.Errorf("unmount overlay: %v", err)
			unmountDetach(t, merged)
		}
	})

	want := map[string][]string{
		"":  {"a", "b", "d"},
		"a": {"new", "x"},
		"b": {"z"},
		"d": nil,
	}
	checkDirs(t, merged, want)
	if _, err := os.Lstat(filepath.Join(merged, "c")); !os.IsNotExist(err) {
		t.Errorf("whited-out c: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(merged, "b/keep")); !os.IsNotExist(err) {
		t.Errorf("b/keep under an opaque dir: %v", err)
	}
	checkContent(t, filepath.Join(merged, "a/x"), []byte("x"))
	checkContent(t, filepath.Join(merged, "b/z"), []byte("z"))
}

// withXattrs sets xattrs of a test entry, as a tar's PAX records carry them.
func withXattrs(e tarEntry, x map[string]string) tarEntry {
	e.hdr.PAXRecords = map[string]string{}
	for k, v := range x {
		e.hdr.PAXRecords["SCHILY.xattr."+k] = v
	}
	return e
}

// TestOverlayIgnoresImageOverlayXattrs mounts overlayfs over a layer whose
// content carries overlayfs's own xattrs: a redirect on a directory that
// would merge it with another directory of the layers below, a metacopy
// file redirected to a file below, and an opaque xattr where the image has
// no opaque marker. What the merged tree shows must be what the layers
// hold, under the kernel's default options and under the most permissive
// ones (an operator's kernel may follow redirects and metacopy by default).
func TestOverlayIgnoresImageOverlayXattrs(t *testing.T) {
	lower := buildLayer(t, []tarEntry{
		dir("secret/", 0o700), file("secret/key", 0o600, []byte("SECRET")),
		dir("pub/", 0o755), file("pub/f", 0o644, []byte("public")),
		dir("opq/", 0o755), file("opq/x", 0o644, []byte("x")),
	})
	upper := buildLayer(t, []tarEntry{
		withXattrs(dir("pub/", 0o755), map[string]string{
			"trusted.overlay.redirect": "/secret", "user.overlay.redirect": "/secret",
		}),
		file("pub/g", 0o644, []byte("g")),
		withXattrs(file("meta", 0o644, []byte("upper")), map[string]string{
			"trusted.overlay.metacopy": "", "trusted.overlay.redirect": "/secret/key",
			"user.overlay.metacopy": "", "user.overlay.redirect": "/secret/key",
		}),
		withXattrs(dir("opq/", 0o755), map[string]string{"trusted.overlay.opaque": "y"}),
		file("opq/y", 0o644, []byte("y")),
		withXattrs(file("ping", 0o755, []byte("ping")), map[string]string{
			"security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
			"security.selinux":    "system_u:object_r:shadow_t:s0",
			"security.ima":        "\x03\x02\x04",
			"trusted.evil":        "1",
			"user.kept":           "yes",
		}),
	})
	f := newFS(t, newOpener(lower, upper))
	lowerMP, upperMP := mountLayer(t, f, lower), mountLayer(t, f, upper)

	// Served: the capability (ping's) and user xattrs other than
	// overlayfs's; not served: what tells the kernel how to treat a file.
	p := filepath.Join(upperMP, "ping")
	for name, served := range map[string]bool{
		"security.capability": true, "user.kept": true,
		"security.selinux": false, "security.ima": false, "trusted.evil": false,
	} {
		_, err := unix.Getxattr(p, name, make([]byte, 256))
		if served && err != nil {
			t.Errorf("getxattr %s: %v; want it served", name, err)
		} else if !served && err != unix.ENODATA {
			t.Errorf("getxattr %s: %v; want ENODATA", name, err)
		}
	}
	for _, q := range []string{"pub", "meta", "opq"} {
		buf := make([]byte, 4096)
		n, err := unix.Listxattr(filepath.Join(upperMP, q), buf)
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			t.Errorf("%s: xattrs %q served; want none", q, strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00"))
		}
	}

	for _, opts := range []string{"", ",redirect_dir=on,metacopy=on"} {
		t.Run("options="+opts, func(t *testing.T) {
			merged := mountpoint(t)
			if err := unix.Mount("overlay", merged, "overlay", unix.MS_RDONLY, "lowerdir="+upperMP+":"+lowerMP+opts); err != nil {
				t.Fatalf("mount overlayfs over the layers: %v", err)
			}
			t.Cleanup(func() {
				if err := unix.Unmount(merged, 0); err != nil {
					t.Errorf("unmount overlay: %v", err)
					unmountDetach(t, merged)
				}
			})
			checkDirs(t, merged, map[string][]string{"pub": {"f", "g"}, "opq": {"x", "y"}})
			checkContent(t, filepath.Join(merged, "meta"), []byte("upper"))
			checkContent(t, filepath.Join(merged, "pub/f"), []byte("public"))
		})
	}
}

// checkDirs checks that each directory of want, under root, lists the
// names want says.
func checkDirs(t *testing.T, root string, want map[string][]string) {
	t.Helper()
	for d, names := range want {
		entries, err := os.ReadDir(filepath.Join(root, d))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range entries {
			got = append(got, e.Name())
		}
		sort.Strings(got)
		if !slices.Equal(got, names) {
			t.Errorf("overlay %q = %q, want %q", d, got, names)
		}
	}
}
