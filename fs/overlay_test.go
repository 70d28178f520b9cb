package fs

import (
	"os"
	"path/filepath"
	"slices"
	"sort"
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
	for d, names := range want {
		entries, err := os.ReadDir(filepath.Join(merged, d))
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
	if _, err := os.Lstat(filepath.Join(merged, "c")); !os.IsNotExist(err) {
		t.Errorf("whited-out c: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(merged, "b/keep")); !os.IsNotExist(err) {
		t.Errorf("b/keep under an opaque dir: %v", err)
	}
	checkContent(t, filepath.Join(merged, "a/x"), []byte("x"))
	checkContent(t, filepath.Join(merged, "b/z"), []byte("z"))
}
