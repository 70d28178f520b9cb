package fs

import (
	"archive/tar"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
)

// loaderImage builds a two-layer image holding a real program of this
// machine in the upper layer and the libraries it loads in the lower one,
// behind the symlinks of a merged-/usr system, and an unrelated library.
func loaderImage(t *testing.T) (lower, upper *testLayer, libs []string) {
	const multiarch = "usr/lib/x86_64-linux-gnu/"
	libs = []string{"ld-linux-x86-64.so.2", "libc.so.6", "libselinux.so.1", "libpcre2-8.so.0"}
	es := []tarEntry{
		dir("etc/", 0o755), file("etc/ld.so.cache", 0o644, randomBytes(1, 20<<10)),
		link(tar.TypeSymlink, "lib", "usr/lib"),
		link(tar.TypeSymlink, "lib64", "usr/lib64"),
		dir("usr/", 0o755), dir("usr/lib/", 0o755), dir(multiarch, 0o755), dir("usr/lib64/", 0o755),
		link(tar.TypeSymlink, "usr/lib64/ld-linux-x86-64.so.2", "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
		file(multiarch+"libunrelated.so.1", 0o644, randomBytes(2, 300<<10)),
	}
	for _, name := range libs {
		es = append(es, file(multiarch+name, 0o755, hostFile(t, "/usr/lib/x86_64-linux-gnu/"+name)))
	}
	// What the C library reads at start-up.
	es = append(es,
		link(tar.TypeSymlink, "etc/localtime", "/usr/share/zoneinfo/Etc/UTC"),
		file("etc/nsswitch.conf", 0o644, []byte("passwd: files\n")),
		dir(multiarch+"gconv/", 0o755), file(multiarch+"gconv/gconv-modules.cache", 0o644, randomBytes(3, 11<<10)),
		dir("usr/lib/locale/", 0o755), dir("usr/lib/locale/C.utf8/", 0o755),
		file("usr/lib/locale/C.utf8/LC_CTYPE", 0o644, randomBytes(4, 40<<10)),
		file("usr/lib/locale/C.utf8/LC_NUMERIC", 0o644, []byte("numeric")),
		dir("usr/lib/locale/C.utf8/LC_MESSAGES/", 0o755),
		file("usr/lib/locale/C.utf8/LC_MESSAGES/SYS_LC_MESSAGES", 0o644, []byte("messages")),
		dir("usr/share/", 0o755), dir("usr/share/zoneinfo/", 0o755), dir("usr/share/zoneinfo/Etc/", 0o755),
		file("usr/share/zoneinfo/Etc/UTC", 0o644, []byte("TZif2 UTC")),
	)
	lower = buildLayer(t, es)
	upper = buildLayer(t, []tarEntry{dir("usr/", 0o755), dir("usr/bin/", 0o755), file("usr/bin/ls", 0o755, hostFile(t, "/usr/bin/ls"))})
	return lower, upper, append(libs, "libunrelated.so.1")
}

// TestLoaderPrefetch checks that when a program's start is read, what the
// dynamic loader will open for it (interpreter, ld.so.cache, the libraries
// and theirs, in the image's lower layer, through symlinks) is fetched
// along, so that the loader's reads of them cost no fetch, and that nothing
// else is.
func TestLoaderPrefetch(t *testing.T) {
	lower, upper, libs := loaderImage(t)
	for _, on := range []bool{true, false} {
		o := newOpener(lower, upper)
		opts := []Option{WithCache(newMapCache()), WithBackgroundFetch(false), WithReadahead(0), WithLoaderPrefetch(on)}
		if !on {
			// Nor its directories, which the loader prefetch fetches
			// through the directory prefetch.
			opts = append(opts, WithDirPrefetch(0))
		}
		f := newFS(t, o, opts...)
		ctx := context.Background()
		mps := map[*testLayer]string{}
		for _, l := range []*testLayer{lower, upper} {
			labels := l.labels()
			labels[LabelImageLayers] = l.dgst.String()
			if l == lower {
				labels[LabelImageLayers] += "," + upper.dgst.String()
			}
			mps[l] = mountpoint(t)
			if err := f.Mount(ctx, mps[l], labels); err != nil {
				t.Fatal(err)
			}
		}
		readHead(t, filepath.Join(mps[upper], "usr/bin/ls"))
		waitFetches(t, f)
		libcFiles := []string{"../../share/zoneinfo/Etc/UTC", "../../../etc/nsswitch.conf", "gconv/gconv-modules.cache",
			"../locale/C.utf8/LC_CTYPE", "../locale/C.utf8/LC_NUMERIC", "../locale/C.utf8/LC_MESSAGES/SYS_LC_MESSAGES"}
		for _, name := range append(append([]string{"../../../etc/ld.so.cache"}, libs...), libcFiles...) {
			p := filepath.Join(mps[lower], "usr/lib/x86_64-linux-gnu", name)
			fetched := fetchedReading(t, o, p)
			if want := !on || name == "libunrelated.so.1"; fetched != want {
				t.Errorf("loader prefetch %v: reading %s fetched: %v, want %v", on, filepath.Base(name), fetched, want)
			}
		}
	}
}

// TestLookupImage checks the merged view the loader prefetch looks files up
// in: upper layers first, symlinks followed (relative, absolute, through
// directories), whiteouts and opaque directories hiding what lies below.
func TestLookupImage(t *testing.T) {
	lower := buildLayer(t, []tarEntry{
		dir("a/", 0o755), file("a/x", 0o644, []byte("lower x")), file("a/y", 0o644, []byte("lower y")),
		dir("o/", 0o755), file("o/z", 0o644, []byte("lower z")),
		link(tar.TypeSymlink, "b", "a"),
	})
	upper := buildLayer(t, []tarEntry{
		dir("a/", 0o755), file("a/x", 0o644, []byte("upper x")), file("a/.wh.y", 0o644, nil),
		dir("o/", 0o755), file("o/.wh..wh..opq", 0o644, nil),
		link(tar.TypeSymlink, "c", "/b/x"),
		link(tar.TypeSymlink, "loop", "loop"),
	})
	o := newOpener(lower, upper)
	f := newFS(t, o, WithBackgroundFetch(false))
	lmp := mountLayer(t, f, lower)
	stack := image{layerAt(t, f, mountLayer(t, f, upper)), layerAt(t, f, lmp)}
	for _, tc := range []struct{ path, want string }{
		{"/a/x", "upper"}, {"a/x", "upper"}, {"/b/x", "upper"}, {"/c", "upper"},
		{"/a/y", ""}, {"/b/y", ""}, {"/o/z", ""}, {"/loop", ""}, {"/a", ""}, {"/nothing/x", ""},
	} {
		l, e := stack.lookup(tc.path)
		got := ""
		if e != nil {
			got = "lower"
			if l.Digest() == upper.dgst {
				got = "upper"
			}
		}
		if got != tc.want {
			t.Errorf("lookupImage(%q) in %q, want %q", tc.path, got, tc.want)
		}
	}
}

// TestMountFetchesRuntimeFiles checks that a mount fetches, at once, the
// files the runtime reads when it creates a container (user and groups),
// and nothing else.
func TestMountFetchesRuntimeFiles(t *testing.T) {
	l := buildLayer(t, []tarEntry{
		dir("etc/", 0o755),
		file("etc/group", 0o644, []byte("root:x:0:\n")),
		file("etc/hosts", 0o644, []byte("127.0.0.1 localhost\n")),
		file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n")),
	})
	o := newOpener(l)
	f := newFS(t, o, WithCache(newMapCache()), WithBackgroundFetch(false), WithReadahead(0))
	mp := mountLayer(t, f, l)
	waitFetches(t, f)
	for _, name := range []string{"etc/passwd", "etc/group", "etc/hosts"} {
		if fetched, want := fetchedReading(t, o, filepath.Join(mp, name)), name == "etc/hosts"; fetched != want {
			t.Errorf("reading %s fetched: %v, want %v", name, fetched, want)
		}
	}
}

// TestEntrypointPrefetch checks that once an image's layers are mounted,
// the program its configuration runs, found in its PATH, is fetched with
// what the loader will open for it, before any container reads it.
func TestEntrypointPrefetch(t *testing.T) {
	lower, upper, libs := loaderImage(t)
	config := `{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/bin:/usr/bin"],"Entrypoint":["ls"],"Cmd":["-l"]},"rootfs":{"type":"layers","diff_ids":[]}}`
	o, mps := mountImage(t, config, lower, upper)
	for _, p := range append([]string{filepath.Join(mps[upper], "usr/bin/ls")}, libPaths(mps[lower], libs)...) {
		if fetched, want := fetchedReading(t, o, p), filepath.Base(p) == "libunrelated.so.1"; fetched != want {
			t.Errorf("reading %s fetched: %v, want %v", filepath.Base(p), fetched, want)
		}
	}
}

// mountImage mounts layers (bottom first) as the image of configuration
// config, whose manifest the opener serves, and waits for what the mounts
// started.
func mountImage(t *testing.T, config string, layers ...*testLayer) (*testOpener, map[*testLayer]string) {
	t.Helper()
	cd := digest.FromString(config)
	var descs []string
	for _, l := range layers {
		descs = append(descs, fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}`, l.dgst, len(l.blob)))
	}
	manifest := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[%s]}`,
		cd, len(config), strings.Join(descs, ",")))
	md := digest.FromBytes(manifest)
	o := newOpener(layers...)
	o.blobs[cd] = []byte(config)
	o.manifests = map[digest.Digest][]byte{md: manifest}
	f := newFS(t, manifestOpener{o}, WithCache(newMapCache()), WithBackgroundFetch(false), WithReadahead(0), WithDirPrefetch(0))
	mps := map[*testLayer]string{}
	for _, l := range layers {
		labels := l.labels()
		labels[LabelManifestDigest] = md.String()
		mps[l] = mountpoint(t)
		if err := f.Mount(context.Background(), mps[l], labels); err != nil {
			t.Fatal(err)
		}
	}
	waitIdle(t, f)
	return o, mps
}

func libPaths(root string, libs []string) []string {
	var ps []string
	for _, name := range libs {
		ps = append(ps, filepath.Join(root, "usr/lib/x86_64-linux-gnu", name))
	}
	return ps
}

// TestFindProgram checks how the program of an image is found: in the
// image's PATH (executables only, first match), relative to its working
// directory, or as given.
func TestFindProgram(t *testing.T) {
	l := buildLayer(t, []tarEntry{
		dir("a/", 0o755), file("a/tool", 0o644, []byte("not executable")),
		dir("b/", 0o755), file("b/tool", 0o755, []byte("#!/bin/sh\n")),
		dir("c/", 0o755), file("c/tool", 0o755, []byte("#!/bin/sh\n")),
	})
	f := newFS(t, newOpener(l), WithBackgroundFetch(false))
	stack := image{layerAt(t, f, mountLayer(t, f, l))}
	for _, tc := range []struct{ argv0, dir, path, want string }{
		{"tool", "", "/a:/b:/c", "/b/tool"},
		{"tool", "", "/c:/b", "/c/tool"},
		{"./tool", "/c", "", "/c/tool"},
		{"/x/y", "/c", "", "/x/y"},
	} {
		env := []string{"HOME=/", "PATH=" + tc.path}
		if got := findProgram(stack, tc.argv0, env, tc.dir); got != tc.want {
			t.Errorf("findProgram(%q, PATH=%s, dir %q) = %q, want %q", tc.argv0, tc.path, tc.dir, got, tc.want)
		}
	}
	for _, tc := range []struct {
		head, want string
		ok         bool
	}{
		{"#!/bin/sh -e\necho", "/bin/sh", true},
		{"#! /usr/bin/env python3\n", "/usr/bin/env", true},
		{"#!relative\n", "", false},
		{"\x7fELF", "", false},
	} {
		if got, ok := scriptInterpreter([]byte(tc.head)); got != tc.want || ok != tc.ok {
			t.Errorf("scriptInterpreter(%q) = %q, %v", tc.head, got, ok)
		}
	}
}

// TestSiblingLibsPrefetch checks that a library read before anything named
// it (loaded with dlopen) brings the other shared objects of its directory
// along, and not its other files.
func TestSiblingLibsPrefetch(t *testing.T) {
	const lib = "/usr/lib/x86_64-linux-gnu/"
	l := buildLayer(t, []tarEntry{
		dir("plugins/", 0o755),
		file("plugins/libone.so", 0o755, hostFile(t, lib+"libselinux.so.1")),
		file("plugins/libtwo.so.2", 0o755, hostFile(t, lib+"libpcre2-8.so.0")),
		file("plugins/_three.cpython-311-x86_64-linux-gnu.so", 0o755, hostFile(t, lib+"libz.so.1")),
		file("plugins/README", 0o644, randomBytes(9, 200<<10)),
	})
	checkLoadBrings(t, l, "plugins/libone.so", "plugins/", []string{"libtwo.so.2", "_three.cpython-311-x86_64-linux-gnu.so"}, "README")
}

// TestRunPathSiblingsPrefetch checks that a library found through a
// program's run path (its own library directory, as a JDK's lib/ is for
// bin/java) brings the other shared objects of that directory along: the
// plugins the program loads with dlopen next.
func TestRunPathSiblingsPrefetch(t *testing.T) {
	const jdk = "/usr/lib/jvm/java-17-openjdk-amd64/"
	l := buildLayer(t, []tarEntry{
		dir("jdk/", 0o755), dir("jdk/bin/", 0o755), dir("jdk/lib/", 0o755),
		file("jdk/bin/java", 0o755, hostFile(t, jdk+"bin/java")),
		file("jdk/lib/libjli.so", 0o644, hostFile(t, jdk+"lib/libjli.so")),
		file("jdk/lib/libplugin.so", 0o644, hostFile(t, "/usr/lib/x86_64-linux-gnu/libz.so.1")),
		file("jdk/lib/data.bin", 0o644, randomBytes(6, 100<<10)),
	})
	checkLoadBrings(t, l, "jdk/bin/java", "jdk/lib/", []string{"libjli.so", "libplugin.so"}, "data.bin")
}

// checkLoadBrings mounts l, reads the start of file head as the loader
// does, and checks that reading the files brought of dir then costs no
// fetch, and reading other, which was not brought, does.
func checkLoadBrings(t *testing.T, l *testLayer, head, dir string, brought []string, other string) {
	t.Helper()
	o := newOpener(l)
	f := newFS(t, o, WithCache(newMapCache()), WithBackgroundFetch(false), WithReadahead(0), WithDirPrefetch(0))
	mp := mountLayer(t, f, l)
	readHead(t, filepath.Join(mp, head))
	waitFetches(t, f)
	for _, name := range append(slices.Clone(brought), other) {
		if fetched, want := fetchedReading(t, o, filepath.Join(mp, dir, name)), name == other; fetched != want {
			t.Errorf("reading %s fetched: %v, want %v", name, fetched, want)
		}
	}
}

// hostFile returns the content of a file of this machine, or skips the
// test without it.
func hostFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Skip(err)
	}
	return b
}

// readHead reads the first 4 KiB of file p, as the kernel does to exec a
// program or the loader to load a library.
func readHead(t *testing.T, p string) {
	t.Helper()
	fh, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if _, err := fh.Read(make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
}

// fetchedReading reads file p whole and reports whether that fetched.
func fetchedReading(t *testing.T, o *testOpener, p string) bool {
	t.Helper()
	before := reads(o)
	if _, err := os.ReadFile(p); err != nil {
		t.Fatal(err)
	}
	return reads(o) > before
}

// TestPythonPrefetch checks that when a Python interpreter's start is read,
// the modules it imports as it starts (the encodings package, with the
// rest of its directory, the distribution's sitecustomize, and before 3.11
// the modules later versions freeze) and the .pth files of its site
// directories are fetched along, and nothing else.
func TestPythonPrefetch(t *testing.T) {
	lower, _, _ := loaderImage(t)
	for _, v := range []struct {
		version, tag string
		frozen       bool
	}{{"3.11", "311", true}, {"3.9", "39", false}} {
		stdlib := "usr/lib/python" + v.version + "/"
		pyc := func(dir, mod string) string { return dir + "__pycache__/" + mod + ".cpython-" + v.tag + ".pyc" }
		upper := buildLayer(t, []tarEntry{
			dir("usr/", 0o755), dir("usr/bin/", 0o755), file("usr/bin/python"+v.version, 0o755, hostFile(t, "/usr/bin/ls")),
			link(tar.TypeSymlink, "usr/bin/python3", "python"+v.version),
			dir(stdlib, 0o755), dir(stdlib+"__pycache__/", 0o755), dir(stdlib+"encodings/", 0o755), dir(stdlib+"encodings/__pycache__/", 0o755),
			file(stdlib+"encodings/__init__.py", 0o644, randomBytes(20, 5000)),
			file(pyc(stdlib+"encodings/", "__init__"), 0o644, randomBytes(21, 3000)),
			file(pyc(stdlib+"encodings/", "aliases"), 0o644, randomBytes(22, 5000)),
			file(pyc(stdlib+"encodings/", "utf_8"), 0o644, randomBytes(23, 1000)),
			file(pyc(stdlib+"encodings/", "latin_1"), 0o644, randomBytes(24, 1000)),
			file(pyc(stdlib, "sitecustomize"), 0o644, randomBytes(25, 400)),
			// Too large together for the directory prefetch.
			file(pyc(stdlib, "os"), 0o644, randomBytes(26, 40<<10)),
			file(pyc(stdlib, "unrelated"), 0o644, randomBytes(27, 40<<10)),
			dir("usr/lib/python3/", 0o755), dir("usr/lib/python3/dist-packages/", 0o755),
			file("usr/lib/python3/dist-packages/distutils-precedence.pth", 0o644, []byte("import _distutils_hack\n")),
			file("usr/lib/python3/dist-packages/README", 0o644, randomBytes(28, 3000)),
		})
		o := newOpener(lower, upper)
		f := newFS(t, o, WithCache(newMapCache()), WithBackgroundFetch(false), WithReadahead(0), WithDirPrefetch(32<<10))
		mps := map[*testLayer]string{}
		for _, l := range []*testLayer{lower, upper} {
			labels := l.labels()
			labels[LabelImageLayers] = lower.dgst.String() + "," + upper.dgst.String()
			mps[l] = mountpoint(t)
			if err := f.Mount(context.Background(), mps[l], labels); err != nil {
				t.Fatal(err)
			}
		}
		readHead(t, filepath.Join(mps[upper], "usr/bin/python3"))
		waitFetches(t, f)
		for _, c := range []struct {
			name    string
			fetches bool
		}{
			{pyc(stdlib+"encodings/", "__init__"), false},
			{pyc(stdlib+"encodings/", "aliases"), false},
			{pyc(stdlib+"encodings/", "utf_8"), false},
			{pyc(stdlib+"encodings/", "latin_1"), false},
			{pyc(stdlib, "sitecustomize"), false},
			{pyc(stdlib, "os"), v.frozen},
			{pyc(stdlib, "unrelated"), true},
			{"usr/lib/python3/dist-packages/distutils-precedence.pth", false},
			{"usr/lib/python3/dist-packages/README", true},
		} {
			if fetched := fetchedReading(t, o, filepath.Join(mps[upper], c.name)); fetched != c.fetches {
				t.Errorf("python%s: reading %s fetched: %v, want %v", v.version, c.name, fetched, c.fetches)
			}
		}
	}
}
