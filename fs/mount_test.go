package fs

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	"golang.org/x/sys/unix"
)

const testChunkSize = 256 << 10

// fullEntries has every entry type, hardlinks, xattrs, a whiteout, an opaque
// directory and a 10 MiB file in many chunks.
func fullEntries() []tarEntry {
	small := file("a/small", 0o644, randomBytes(1, 4096))
	small.hdr.PAXRecords = map[string]string{"SCHILY.xattr.user.color": "blue", "SCHILY.xattr.user.empty": ""}
	a := dir("a/", 0o750)
	a.hdr.PAXRecords = map[string]string{"SCHILY.xattr.user.dir": "yes"}
	return []tarEntry{
		a,
		small,
		file("a/empty", 0o600, nil),
		file("a/text", 0o644, []byte("hello, lazy world\n")),
		link(tar.TypeSymlink, "a/link", "small"),
		link(tar.TypeLink, "a/hard", "a/small"),
		file("a/.wh.gone", 0o644, nil),
		file("big", 0o755, randomBytes(2, 10<<20)),
		file("suid", 0o4755, []byte("#!/bin/true\n")),
		dir("dev/", 0o755),
		device(tar.TypeChar, "dev/null", 1, 3),
		device(tar.TypeBlock, "dev/loop0", 7, 0),
		device(tar.TypeFifo, "dev/fifo", 0, 0),
		dir("opq/", 0o755),
		file("opq/.wh..wh..opq", 0o644, nil),
		file("opq/kept", 0o644, []byte("kept")),
		dir("x/", 0o755), dir("x/y/", 0o700), dir("x/y/z/", 0o755),
		file("x/y/z/deep", 0o444, []byte("deep")),
		dir("emptydir/", 0o1777),
	}
}

var (
	fullOnce sync.Once
	full     *testLayer
)

// fullLayer returns the layer of fullEntries, built once per test binary.
// Tests must not modify it.
func fullLayer(t testing.TB) *testLayer {
	t.Helper()
	fullOnce.Do(func() {
		full = buildLayer(t, fullEntries(), estargz.WithChunkSize(testChunkSize), estargz.WithCompressionLevel(gzip.BestSpeed))
	})
	if full == nil {
		t.Fatal("building the full layer failed")
	}
	return full
}

// TestTree checks that the mounted tree, attributes, xattrs and contents are
// those of the source tar, with whiteouts and markers as overlayfs expects.
func TestTree(t *testing.T) {
	l := fullLayer(t)
	f := newFS(t, newOpener(l))
	mp := mountLayer(t, f, l)

	want := map[string]bool{}
	for _, e := range l.entries {
		name := strings.TrimSuffix(e.hdr.Name, "/")
		base := filepath.Base(name)
		switch {
		case base == ".wh..wh..opq":
			continue
		case strings.HasPrefix(base, ".wh."):
			name = filepath.Join(filepath.Dir(name), strings.TrimPrefix(base, ".wh."))
			checkWhiteout(t, filepath.Join(mp, name))
		default:
			checkEntry(t, mp, e)
		}
		want[name] = true
	}
	var got []string
	err := filepath.Walk(mp, func(p string, _ os.FileInfo, err error) error {
		if p != mp {
			got = append(got, strings.TrimPrefix(p, mp+"/"))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var wantNames []string
	for n := range want {
		wantNames = append(wantNames, n)
	}
	sort.Strings(wantNames)
	sort.Strings(got)
	if !slices.Equal(got, wantNames) {
		t.Errorf("tree = %q\nwant %q", got, wantNames)
	}
	if v := getxattr(t, filepath.Join(mp, "opq"), opaqueXattr); v != "y" {
		t.Errorf("opaque dir xattr = %q, want y", v)
	}
	if _, err := os.Lstat(filepath.Join(mp, estargz.NoPrefetchLandmark)); !os.IsNotExist(err) {
		t.Errorf("landmark visible: %v", err)
	}
	checkHardlink(t, filepath.Join(mp, "a/small"), filepath.Join(mp, "a/hard"))
}

func checkEntry(t *testing.T, mp string, e tarEntry) {
	t.Helper()
	p := filepath.Join(mp, e.hdr.Name)
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Errorf("%s: %v", e.hdr.Name, err)
		return
	}
	typ := map[byte]uint32{tar.TypeDir: unix.S_IFDIR, tar.TypeReg: unix.S_IFREG, tar.TypeSymlink: unix.S_IFLNK,
		tar.TypeLink: unix.S_IFREG, tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[e.hdr.Typeflag]
	if st.Mode&unix.S_IFMT != typ {
		t.Errorf("%s: type %o, want %o", e.hdr.Name, st.Mode&unix.S_IFMT, typ)
	}
	if e.hdr.Typeflag != tar.TypeSymlink && e.hdr.Typeflag != tar.TypeLink && int64(st.Mode&0o7777) != e.hdr.Mode {
		t.Errorf("%s: mode %o, want %o", e.hdr.Name, st.Mode&0o7777, e.hdr.Mode)
	}
	if st.Uid != 1000 || st.Gid != 2000 || st.Mtim.Sec != testTime.Unix() {
		t.Errorf("%s: uid %d gid %d mtime %d, want 1000 2000 %d", e.hdr.Name, st.Uid, st.Gid, st.Mtim.Sec, testTime.Unix())
	}
	switch e.hdr.Typeflag {
	case tar.TypeReg:
		checkContent(t, p, e.data)
	case tar.TypeSymlink:
		if target, err := os.Readlink(p); err != nil || target != e.hdr.Linkname {
			t.Errorf("%s: readlink = %q, %v; want %q", e.hdr.Name, target, err, e.hdr.Linkname)
		}
	case tar.TypeChar, tar.TypeBlock:
		if st.Rdev != unix.Mkdev(uint32(e.hdr.Devmajor), uint32(e.hdr.Devminor)) {
			t.Errorf("%s: rdev %x", e.hdr.Name, st.Rdev)
		}
	}
	checkXattrs(t, p, e)
}

func checkContent(t *testing.T, p string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(p)
	if err != nil {
		t.Errorf("read %s: %v", p, err)
	} else if !bytes.Equal(got, want) {
		t.Errorf("%s: content differs (%d bytes, want %d)", p, len(got), len(want))
	}
}

func checkXattrs(t *testing.T, p string, e tarEntry) {
	t.Helper()
	if e.hdr.Typeflag == tar.TypeSymlink || e.hdr.Typeflag == tar.TypeLink {
		return
	}
	var want []string
	for k, v := range e.hdr.PAXRecords {
		name := strings.TrimPrefix(k, "SCHILY.xattr.")
		want = append(want, name)
		if got := getxattr(t, p, name); got != v {
			t.Errorf("%s: xattr %s = %q, want %q", p, name, got, v)
		}
	}
	if e.hdr.Name == "opq/" {
		want = append(want, opaqueXattr)
	}
	sort.Strings(want)
	if got := listxattr(t, p); !slices.Equal(got, want) {
		t.Errorf("%s: xattrs %q, want %q", p, got, want)
	}
}

func checkWhiteout(t *testing.T, p string) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Errorf("whiteout %s: %v", p, err)
		return
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("whiteout %s: mode %o rdev %x, want a 0:0 char device", p, st.Mode, st.Rdev)
	}
}

func checkHardlink(t *testing.T, a, b string) {
	t.Helper()
	var sa, sb unix.Stat_t
	if err := unix.Lstat(a, &sa); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lstat(b, &sb); err != nil {
		t.Fatal(err)
	}
	if sa.Ino != sb.Ino || sa.Nlink != 2 || sb.Nlink != 2 {
		t.Errorf("hardlinks: ino %d/%d nlink %d/%d, want one inode with 2 links", sa.Ino, sb.Ino, sa.Nlink, sb.Nlink)
	}
}

func getxattr(t *testing.T, p, name string) string {
	t.Helper()
	buf := make([]byte, 256)
	n, err := unix.Lgetxattr(p, name, buf)
	if err != nil {
		t.Errorf("getxattr %s %s: %v", p, name, err)
		return ""
	}
	return string(buf[:n])
}

func listxattr(t *testing.T, p string) []string {
	t.Helper()
	buf := make([]byte, 1024)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		t.Errorf("listxattr %s: %v", p, err)
		return nil
	}
	var names []string
	for _, s := range strings.Split(string(buf[:n]), "\x00") {
		if s != "" {
			names = append(names, s)
		}
	}
	sort.Strings(names)
	return names
}

// TestMountIsReadOnlyAndNamed checks the mount's options and its statfs.
func TestMountIsReadOnlyAndNamed(t *testing.T) {
	l := fullLayer(t)
	f := newFS(t, newOpener(l))
	mp := mountLayer(t, f, l)
	info := mountInfo(t, mp)
	for _, want := range []string{" ro,", "fuse.lazypull", "lazypull:" + l.dgst.String(), "allow_other", "default_permissions"} {
		if !strings.Contains(info, want) {
			t.Errorf("mountinfo %q lacks %q", info, want)
		}
	}
	if err := os.WriteFile(filepath.Join(mp, "a/new"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("create on the layer: %v, want EROFS", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(mp, &st); err != nil {
		t.Fatal(err)
	}
	if st.Files < uint64(len(l.entries)) || st.Blocks < (10<<20)/4096 {
		t.Errorf("statfs files %d blocks %d", st.Files, st.Blocks)
	}
}

// TestStableInodes checks that a remount gives every file the same inode number.
func TestStableInodes(t *testing.T) {
	l := fullLayer(t)
	inodes := func() map[string]uint64 {
		f := newFS(t, newOpener(l))
		mp := mountLayer(t, f, l)
		m := map[string]uint64{}
		filepath.Walk(mp, func(p string, fi os.FileInfo, err error) error {
			if err == nil {
				m[strings.TrimPrefix(p, mp)] = fi.Sys().(*syscall.Stat_t).Ino
			}
			return err
		})
		if err := f.Unmount(context.Background(), mp); err != nil {
			t.Fatal(err)
		}
		return m
	}
	first, second := inodes(), inodes()
	if len(first) < 10 || !equalMaps(first, second) {
		t.Errorf("inodes changed across mounts:\n%v\n%v", first, second)
	}
}

func equalMaps(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestCheckUnmount checks the lifecycle of a mount through Check and Unmount.
func TestCheckUnmount(t *testing.T) {
	l := fullLayer(t)
	f := newFS(t, newOpener(l))
	mp := mountLayer(t, f, l)
	ctx := context.Background()
	if err := f.Check(ctx, mp, l.labels()); err != nil {
		t.Fatalf("Check: %v", err)
	}
	other := l.labels()
	other[LabelTOCDigest] = "sha256:" + strings.Repeat("0", 64)
	if err := f.Check(ctx, mp, other); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Check with another TOC digest: %v", err)
	}
	if err := f.Mount(ctx, mp, l.labels()); !errdefs.IsAlreadyExists(err) {
		t.Errorf("second Mount at %s: %v", mp, err)
	}
	if err := f.Unmount(ctx, mp); err != nil {
		t.Fatalf("Unmount: %v", err)
	}
	if isMounted(t, mp) {
		t.Error("still mounted after Unmount")
	}
	if err := f.Check(ctx, mp, l.labels()); !errdefs.IsNotFound(err) {
		t.Errorf("Check after Unmount: %v", err)
	}
	if err := f.Unmount(ctx, mp); !errdefs.IsNotFound(err) {
		t.Errorf("second Unmount: %v", err)
	}
}

// TestCloseUnmounts checks that Close leaves nothing mounted.
func TestCloseUnmounts(t *testing.T) {
	l := fullLayer(t)
	f, err := New(t.TempDir(), newOpener(l))
	if err != nil {
		t.Fatal(err)
	}
	mp1, mp2 := mountpoint(t), mountpoint(t)
	t.Cleanup(func() {
		for _, mp := range []string{mp1, mp2} {
			if isMounted(t, mp) {
				unmountDetach(t, mp)
			}
		}
	})
	for _, mp := range []string{mp1, mp2} {
		if err := f.Mount(context.Background(), mp, l.labels()); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if isMounted(t, mp1) || isMounted(t, mp2) {
		t.Error("mounted after Close")
	}
	if err := f.Mount(context.Background(), mp1, l.labels()); !errdefs.IsUnavailable(err) {
		t.Errorf("Mount after Close: %v", err)
	}
}

// TestPrefetchLandmarkHidden checks that the landmark of a layer with
// prioritized files is not part of the tree.
func TestPrefetchLandmarkHidden(t *testing.T) {
	l := buildLayer(t, []tarEntry{file("first", 0o644, []byte("1")), file("second", 0o644, []byte("2"))},
		estargz.WithPrioritizedFiles([]string{"second"}))
	f := newFS(t, newOpener(l))
	mp := mountLayer(t, f, l)
	entries, err := os.ReadDir(mp)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"first", "second"}) {
		t.Errorf("root = %q, want the files without landmark", names)
	}
	if _, err := os.Lstat(filepath.Join(mp, estargz.PrefetchLandmark)); !os.IsNotExist(err) {
		t.Errorf("landmark: %v", err)
	}
	checkContent(t, filepath.Join(mp, "second"), []byte("2"))
}
