package fs

import (
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestZeroPermissions checks that entries without any permission bits keep
// mode 0000 instead of getting go-fuse's defaults (0644 for files, 0755 for
// directories): the layer must look exactly as containerd would unpack it.
func TestZeroPermissions(t *testing.T) {
	l := buildLayer(t, []tarEntry{
		file("f0000", 0o000, []byte("no permissions\n")),
		dir("d0000/", 0o000),
		file("d0000/inner", 0o000, nil),
		file("f4000", 0o4000, []byte("setuid, nothing else\n")),
	})
	f := newFS(t, newOpener(l))
	mp := mountLayer(t, f, l)
	for name, want := range map[string]uint32{
		"f0000":       unix.S_IFREG,
		"d0000":       unix.S_IFDIR,
		"d0000/inner": unix.S_IFREG,
		"f4000":       unix.S_IFREG | 0o4000,
	} {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(mp, name), &st); err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if st.Mode != want {
			t.Errorf("%s: mode %o, want %o", name, st.Mode, want)
		}
	}
}
