package main

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"

	"github.com/klauspost/compress/gzip"
)

type entry struct {
	name, body, link string
	typ              byte
}

func writeRootfs(t *testing.T, entries []entry) string {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: 0o644, Size: int64(len(e.body))}
		if e.typ == tar.TypeDir {
			hdr.Mode = 0o755
		}
		if e.typ != tar.TypeReg {
			hdr.Size = 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil && e.typ == tar.TypeReg {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "rootfs.tar")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func layerNames(t *testing.T, file string) []string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	var names []string
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
	}
}

func TestSplitLayers(t *testing.T) {
	d, r, l, s := byte(tar.TypeDir), byte(tar.TypeReg), byte(tar.TypeLink), byte(tar.TypeSymlink)
	rootfs := writeRootfs(t, []entry{
		{name: "./", typ: d},
		{name: "./usr/", typ: d},
		{name: "./usr/bin/", typ: d},
		{name: "./usr/bin/sh", typ: r, body: "sh"},
		{name: "./usr/bin/python3.11", typ: r, body: "python"},
		{name: "./usr/bin/python3", typ: s, link: "python3.11"},
		{name: "./usr/bin/py-hardlink", typ: l, link: "./usr/bin/python3.11"},
		{name: "./usr/lib/", typ: d},
		{name: "./usr/lib/python3.11/", typ: d},
		{name: "./usr/lib/python3.11/os.py", typ: r, body: "os"},
		{name: "./usr/lib/python3.11/__pycache__/", typ: d},
		{name: "./usr/lib/python3.11/__pycache__/os.pyc", typ: r, body: "pyc"},
		{name: "./var/", typ: d},
		{name: "./var/lib/", typ: d},
		{name: "./var/lib/dpkg/", typ: d},
		{name: "./var/lib/dpkg/info/", typ: d},
		{name: "./var/lib/dpkg/info/dash.list", typ: r, body: "/.\n/usr\n/usr/bin\n/usr/bin/sh\n/usr/lib\n"},
		{name: "./var/lib/dpkg/info/python3.11-minimal.list", typ: r, body: "/.\n/usr\n/usr/bin\n/usr/bin/python3.11\n"},
		{name: "./var/lib/dpkg/info/python3.11-minimal.postinst", typ: r, body: "#!/bin/sh\n"},
		{name: "./var/lib/dpkg/info/python3-minimal.list", typ: r, body: "/.\n/usr/bin/python3\n"},
		{name: "./var/lib/dpkg/info/libpython3.11-stdlib:amd64.list", typ: r, body: "/usr/lib\n/usr/lib/python3.11\n/usr/lib/python3.11/os.py\n"},
		{name: "./var/lib/dpkg/status", typ: r, body: "Package: dash\n"},
	})
	o, err := readOwners(rootfs, regexp.MustCompile(`^(lib)?python3`))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	base, upper := filepath.Join(dir, "base.tar.gz"), filepath.Join(dir, "upper.tar.gz")
	st, err := splitLayers(rootfs, o, base, upper)
	if err != nil {
		t.Fatal(err)
	}
	wantBase := []string{
		"usr", "usr/bin", "usr/bin/sh", "usr/lib",
		"var", "var/lib", "var/lib/dpkg", "var/lib/dpkg/info", "var/lib/dpkg/info/dash.list", "var/lib/dpkg/status",
	}
	wantUpper := []string{
		"usr", "usr/bin", "usr/bin/python3.11", "usr/bin/python3", "usr/bin/py-hardlink",
		"usr/lib", "usr/lib/python3.11", "usr/lib/python3.11/os.py",
		"usr/lib/python3.11/__pycache__", "usr/lib/python3.11/__pycache__/os.pyc",
		"var", "var/lib", "var/lib/dpkg", "var/lib/dpkg/info",
		"var/lib/dpkg/info/python3.11-minimal.list", "var/lib/dpkg/info/python3.11-minimal.postinst",
		"var/lib/dpkg/info/python3-minimal.list", "var/lib/dpkg/info/libpython3.11-stdlib:amd64.list",
	}
	if got := layerNames(t, base); !slices.Equal(got, wantBase) {
		t.Errorf("base layer:\n got %q\nwant %q", got, wantBase)
	}
	if got := layerNames(t, upper); !slices.Equal(got, wantUpper) {
		t.Errorf("upper layer:\n got %q\nwant %q", got, wantUpper)
	}
	if st.baseFiles != 3 || st.upperFiles != 9 {
		t.Errorf("files: base %d, upper %d; want 3 and 9", st.baseFiles, st.upperFiles)
	}
}

func TestPackageOf(t *testing.T) {
	for file, want := range map[string]string{
		"python3.11-minimal.list":            "python3.11-minimal",
		"libpython3.11-stdlib:amd64.md5sums": "libpython3.11-stdlib",
		"dash.postinst":                      "dash",
	} {
		if got := packageOf(file); got != want {
			t.Errorf("packageOf(%q) = %q, want %q", file, got, want)
		}
	}
}
