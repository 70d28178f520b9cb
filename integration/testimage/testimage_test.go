package testimage

import (
	"archive/tar"
	"bytes"
	"io"
	"testing"
)

func TestFlattenDefault(t *testing.T) {
	tree, err := Flatten(Default([]byte("entrypoint")))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"del/gone", "deldir/a", "deldir/sub", "deldir/sub/b", "opq/old1", "opq/olddir", "many/d00/f0000"} {
		if _, ok := tree[p]; ok {
			t.Errorf("%s survived its whiteout", p)
		}
	}
	for p, typ := range map[string]string{
		"del/kept": TypeReg, "deldir/new": TypeReg, "opq/new": TypeReg, "data/typechange": TypeDir,
		"data/typechange/inner": TypeReg, "links/willbefile": TypeReg, "links/dangling": TypeSymlink,
		"modes/fifo": TypeFifo, "many/d24/f2499": TypeReg,
	} {
		if n, ok := tree[p]; !ok || n.Type != typ {
			t.Errorf("%s: want a %s, got %+v", p, typ, n)
		}
	}
	if got := string(tree["data/one"].Data()); got != "overwritten by layer 2\n" {
		t.Errorf("data/one = %q, want layer 2's content", got)
	}
	for _, p := range []string{"hl/a", "hl/b", "hl/sub/c"} {
		if tree[p].HardlinkOf != "hl/a" {
			t.Errorf("%s: HardlinkOf = %q, want hl/a", p, tree[p].HardlinkOf)
		}
	}
	if tree["bin/suid"].Mode != 0o4755 || tree["modes/sticky"].Mode != 0o1777 {
		t.Errorf("special mode bits lost: suid %o sticky %o", tree["bin/suid"].Mode, tree["modes/sticky"].Mode)
	}
	if n := tree["data/big"]; n.Size != BigFileSize || n.Size <= 8<<20 {
		t.Errorf("data/big is %d bytes", n.Size)
	}
	if n := tree["owned/nobody"]; n.UID != 65534 || n.GID != 65534 {
		t.Errorf("owned/nobody owned by %d:%d", n.UID, n.GID)
	}
}

func TestLookupFollowsSymlinks(t *testing.T) {
	tree, err := Flatten(Default(nil))
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]string{
		"/links/rel": "data/hello", "/links/abs": "data/hello", "/links/dir/big": "data/big", "/owned/link": "owned/user",
	} {
		n, err := tree.Lookup(p)
		if err != nil {
			t.Fatal(err)
		}
		if n != tree[want] {
			t.Errorf("Lookup(%s) is not %s", p, want)
		}
	}
	if _, err := tree.Lookup("/links/dangling"); err == nil {
		t.Error("Lookup of a dangling symlink succeeded")
	}
}

func TestTarWritesWhiteoutsXattrsAndHardlinkMetadata(t *testing.T) {
	l := Layer{Entries: []Entry{
		Dir("d", 0o755),
		owned(withXattrs(File("d/f", 0o4750, []byte("x")), map[string]string{"user.k": "v"}), 7, 8),
		Hardlink("d/h", "d/f"),
		Whiteout("d/gone"),
		Opaque("d"),
	}}
	raw, err := l.Tar()
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(bytes.NewReader(raw))
	var names []string
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
		if hdr.Name == "d/h" {
			if hdr.Typeflag != tar.TypeLink || hdr.Mode != 0o4750 || hdr.Uid != 7 || hdr.Gid != 8 ||
				hdr.PAXRecords["SCHILY.xattr.user.k"] != "v" {
				t.Errorf("hardlink header %+v lacks its target's metadata", hdr)
			}
		}
	}
	want := []string{"d/", "d/f", "d/h", "d/.wh.gone", "d/.wh..wh..opq"}
	if len(names) != len(want) {
		t.Fatalf("entries %v, want %v", names, want)
	}
	for i := range want {
		if names[i] != want[i] {
			t.Errorf("entry %d = %s, want %s", i, names[i], want[i])
		}
	}
	if _, err := (Layer{Entries: []Entry{Hardlink("a", "b")}}).Tar(); err == nil {
		t.Error("a hardlink to a missing target was written")
	}
}

func TestDiffReportsEachField(t *testing.T) {
	a := Tree{"f": {Type: TypeReg, Mode: 0o644, Digest: "1", Xattrs: map[string]string{"user.a": "1"}}}
	b := Tree{"f": {Type: TypeReg, Mode: 0o755, Digest: "2"}, "g": {Type: TypeDir}}
	d := Diff(a, b)
	if len(d) != 4 { // mode, digest, xattrs, unexpected g
		t.Errorf("Diff = %q, want 4 differences", d)
	}
	if Diff(a, a) != nil {
		t.Error("a tree differs from itself")
	}
}
