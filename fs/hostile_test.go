package fs

import (
	"archive/tar"
	"bufio"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

// hostileBase is the layer hostile TOCs are made from: a file the runtime
// reads at container creation (etc/passwd, which Mount fetches on its
// own), a file of several chunks, links.
func hostileBase(t testing.TB) *testLayer {
	t.Helper()
	return buildLayer(t, []tarEntry{
		dir("etc/", 0o755), file("etc/passwd", 0o644, []byte("root:x:0:0::/root:/bin/sh\n")),
		dir("data/", 0o755),
		file("data/big", 0o644, randomBytes(7, 1<<20)),
		file("data/small", 0o644, []byte("small")),
		link(tar.TypeSymlink, "data/link", "small"),
		link(tar.TypeLink, "data/hard", "data/small"),
		device(tar.TypeChar, "data/null", 1, 3),
	}, estargz.WithChunkSize(64<<10))
}

// requireRefused checks that Mount refused layer l for the reason want,
// naming the layer and what in it is wrong, with the errdefs class of a
// TOC lazypull will not serve.
func requireRefused(t *testing.T, err error, l *testLayer, want string) {
	t.Helper()
	switch {
	case err == nil:
		t.Fatalf("Mount of a hostile layer succeeded; want an error saying %q", want)
	case !errdefs.IsInvalidArgument(err):
		t.Errorf("Mount: %v; want an error of class InvalidArgument", err)
	case !strings.Contains(err.Error(), l.dgst.String()) || !strings.Contains(err.Error(), want):
		t.Errorf("Mount: %v; want an error naming layer %s and saying %q", err, l.dgst, want)
	}
}

// hostileTOCCase is a TOC field lazypull must not use as it is, set by
// edit in a TOC of hostileBase; Mount's error says want.
type hostileTOCCase struct {
	name, want string
	edit       func(t testing.TB, toc *estargz.JTOC)
}

// hostileTOCCases are the cases of TestHostileTOC, and seeds of the fuzz
// targets of the TOC.
func hostileTOCCases() []hostileTOCCase {
	return []hostileTOCCase{
		{"chunk size beyond what its bytes inflate to", `"etc/passwd"`, func(t testing.TB, toc *estargz.JTOC) {
			entryOf(t, toc, "etc/passwd", "reg").ChunkSize = 1 << 62
		}},
		{"chunk beyond what its compressed bytes inflate to", `"etc/passwd"`, func(t testing.TB, toc *estargz.JTOC) {
			e := entryOf(t, toc, "etc/passwd", "reg")
			e.Size, e.ChunkSize, e.ChunkDigest, e.Digest = 32<<20, 0, "", ""
		}},
		{"file size over chunk size beyond the entries", `"etc/passwd"`, func(t testing.TB, toc *estargz.JTOC) {
			e := entryOf(t, toc, "etc/passwd", "reg")
			e.Size, e.ChunkSize = 1<<62, 1
		}},
		{"chunks beyond the file", `"data/big"`, func(t testing.TB, toc *estargz.JTOC) {
			cs := chunksOf(toc, "data/big")
			cs[len(cs)-1].ChunkSize += 100
		}},
		{"negative chunk offset", `"etc/passwd"`, func(t testing.TB, toc *estargz.JTOC) {
			e := entryOf(t, toc, "etc/passwd", "reg")
			e.ChunkOffset, e.ChunkSize = -64, 32
		}},
		{"negative offset of a later chunk", `"data/big"`, func(t testing.TB, toc *estargz.JTOC) {
			chunksOf(toc, "data/big")[1].ChunkOffset = -1 << 16
		}},
		{"chunk offset not advancing", `"data/big"`, func(t testing.TB, toc *estargz.JTOC) {
			cs := chunksOf(toc, "data/big")
			cs[2].ChunkOffset = cs[1].ChunkOffset
		}},
		{"gap between chunks", `"data/big"`, func(t testing.TB, toc *estargz.JTOC) {
			chunksOf(toc, "data/big")[2].ChunkOffset++
		}},
		{"negative blob offset", `"data/big"`, func(t testing.TB, toc *estargz.JTOC) {
			chunksOf(toc, "data/big")[3].Offset = -100
		}},
		{"chunk past the payload", `"data/big"`, func(t testing.TB, toc *estargz.JTOC) {
			chunksOf(toc, "data/big")[3].Offset = 1 << 40
		}},
		{"chunk after a directory", "entry 3", func(t testing.TB, toc *estargz.JTOC) {
			toc.Entries = append(toc.Entries[:3], append([]*estargz.TOCEntry{{Type: "chunk", ChunkSize: 10}}, toc.Entries[3:]...)...)
		}},
		{"null entry", "entry 2", func(t testing.TB, toc *estargz.JTOC) {
			toc.Entries = append(toc.Entries[:2], append([]*estargz.TOCEntry{nil}, toc.Entries[2:]...)...)
		}},
		{"unknown type", `"data/sock"`, func(t testing.TB, toc *estargz.JTOC) {
			toc.Entries = append(toc.Entries, &estargz.TOCEntry{Name: "data/sock", Type: "socket"})
		}},
		{"negative size", `"data/small"`, func(t testing.TB, toc *estargz.JTOC) {
			entryOf(t, toc, "data/small", "reg").Size = -1
		}},
		{"hardlink to a directory", `"data/hard"`, func(t testing.TB, toc *estargz.JTOC) {
			entryOf(t, toc, "data/hard", "hardlink").LinkName = "etc"
		}},
		{"dangling hardlink", `"data/hard"`, func(t testing.TB, toc *estargz.JTOC) {
			entryOf(t, toc, "data/hard", "hardlink").LinkName = "data/nothing"
		}},
		{"hardlink cycle", `"data/h1"`, func(t testing.TB, toc *estargz.JTOC) {
			toc.Entries = append(toc.Entries,
				&estargz.TOCEntry{Name: "data/h1", Type: "hardlink", LinkName: "data/h2"},
				&estargz.TOCEntry{Name: "data/h2", Type: "hardlink", LinkName: "data/h1"})
		}},
		{"root not a directory", `""`, func(t testing.TB, toc *estargz.JTOC) {
			toc.Entries = append(toc.Entries, &estargz.TOCEntry{Name: "./", Type: "symlink", LinkName: "/etc"})
		}},
		{"parent not a directory", `"data/small/x"`, func(t testing.TB, toc *estargz.JTOC) {
			toc.Entries = append(toc.Entries, &estargz.TOCEntry{Name: "data/small/x", Type: "fifo"})
		}},
		{"name component too long", "255", func(t testing.TB, toc *estargz.JTOC) {
			toc.Entries = append(toc.Entries, &estargz.TOCEntry{Name: "data/" + strings.Repeat("n", 256), Type: "fifo"})
		}},
		{"path too deep", "deep", func(t testing.TB, toc *estargz.JTOC) {
			toc.Entries = append(toc.Entries, &estargz.TOCEntry{Name: strings.Repeat("d/", 1000) + "f", Type: "fifo"})
		}},
		{"NUL in a name", `"data/a\x00b"`, func(t testing.TB, toc *estargz.JTOC) {
			toc.Entries = append(toc.Entries, &estargz.TOCEntry{Name: "data/a\x00b", Type: "fifo"})
		}},
		{"symlink target too long", `"data/link"`, func(t testing.TB, toc *estargz.JTOC) {
			entryOf(t, toc, "data/link", "symlink").LinkName = strings.Repeat("x/", 3000)
		}},
		{"xattr value too large", `"data/small"`, func(t testing.TB, toc *estargz.JTOC) {
			entryOf(t, toc, "data/small", "reg").Xattrs = map[string][]byte{"user.big": make([]byte, 65537)}
		}},
		{"xattr name empty", `"data/small"`, func(t testing.TB, toc *estargz.JTOC) {
			entryOf(t, toc, "data/small", "reg").Xattrs = map[string][]byte{"": []byte("v")}
		}},
		{"mode out of range", `"data/small"`, func(t testing.TB, toc *estargz.JTOC) {
			entryOf(t, toc, "data/small", "reg").Mode = 1 << 40
		}},
		{"negative uid", `"data/small"`, func(t testing.TB, toc *estargz.JTOC) {
			entryOf(t, toc, "data/small", "reg").UID = -5
		}},
		{"device number out of range", `"data/null"`, func(t testing.TB, toc *estargz.JTOC) {
			entryOf(t, toc, "data/null", "char").DevMajor = 1 << 40
		}},
	}
}

// TestHostileTOC mounts layers whose TOC (with its correct digest) holds a
// field that lazypull must not use as it is: each Mount fails, saying which
// layer and which entry is wrong, and the layers mounted before and after
// on the same FileSystem read right. Without the checks, some of these
// crash the process (a buffer sized from a chunk size, a slice sized from
// a file size over a chunk size, a null entry), some never finish
// indexing the TOC while memory grows (chunk offsets that do not advance),
// and others are served with content that is not the layer's.
func TestHostileTOC(t *testing.T) {
	base := hostileBase(t)
	cases := hostileTOCCases()
	o := newOpener()
	f := newFS(t, o, WithCache(newMapCache()), WithBackgroundFetchDelay(0))
	healthy := healthyLayers(t, f, o)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := editTOC(t, base, func(toc *estargz.JTOC) { tc.edit(t, toc) })
			o.mu.Lock()
			o.blobs[l.dgst] = l.blob
			o.mu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			mp := mountpoint(t)
			err := f.Mount(ctx, mp, l.labels())
			if err == nil {
				defer f.Unmount(context.Background(), mp)
			}
			requireRefused(t, err, l, tc.want)
		})
	}
	healthy()
}

// TestHostileJSONNesting mounts a layer whose TOC nests arrays millions
// deep in a field estargz does not know, 20 KB gzip'd: a recursive
// decoder runs out of stack, which no recover catches.
func TestHostileJSONNesting(t *testing.T) {
	const depth = 20 << 20
	js := `{"version":1,"entries":[],"x":` + strings.Repeat("[", depth) + strings.Repeat("]", depth) + "}"
	o := newOpener()
	f := newFS(t, o)
	healthy := healthyLayers(t, f, o)
	l := withTOC(t, hostileBase(t), []byte(js))
	o.blobs[l.dgst] = l.blob
	requireRefused(t, mountErr(t, f, l), l, "nested")
	healthy()
}

// writeEntries writes a TOC of n entries, the ith named name(i), padded
// with spaces to size bytes.
func writeEntries(n int, name func(i int) string, size int64) func(w *bufio.Writer) error {
	return func(w *bufio.Writer) error {
		var written int64
		put := func(s string) {
			k, _ := w.WriteString(s)
			written += int64(k)
		}
		put(`{"version":1,"entries":[`)
		for i := range n {
			if i > 0 {
				put(",")
			}
			put(fmt.Sprintf(`{"name":%q,"type":"fifo"}`, name(i)))
		}
		put("]}")
		for ; written < size; written++ {
			w.WriteByte(' ')
		}
		return nil
	}
}

// tocSize is the size of the TOC writeEntries writes unpadded.
func tocSize(n int, name func(i int) string) int64 {
	size := int64(len(`{"version":1,"entries":[]}`))
	for i := range n {
		size += int64(len(fmt.Sprintf(`{"name":%q,"type":"fifo"}`, name(i))))
		if i > 0 {
			size++
		}
	}
	return size
}

// TestHostileTOCSize mounts layers whose footer or TOC would make lazypull
// fetch, inflate or hold far more than any real layer's TOC takes: each
// Mount fails at once, having fetched and allocated about what the limits
// allow, and the layers mounted before and after read right.
func TestHostileTOCSize(t *testing.T) {
	lim := DefaultLimits()
	base := hostileBase(t)
	fifos := func(n int, name func(i int) string) *testLayer {
		size := tocSize(n, name)
		return streamedLayer(t, base, size, writeEntries(n, name, size))
	}
	cases := []struct {
		name, want string
		layer      func() *testLayer
		jsonSize   int64 // what the TOC inflates to, which may be held
	}{
		{"footer points at the start of a large blob", "compressed TOC", func() *testLayer {
			blob := append(randomBytes(3, int(lim.TOCCompressedSize)+(8<<20)), footerAt(0)...)
			return &testLayer{blob: blob, dgst: digest.FromBytes(blob), toc: digest.FromBytes(nil)}
		}, 0},
		{"TOC inflates beyond the limit", "inflates", func() *testLayer {
			return streamedLayer(t, base, lim.TOCSize+1, writeEntries(1, func(int) string { return "f" }, lim.TOCSize+1))
		}, 0},
		{"too many entries", "entries", func() *testLayer {
			return fifos(lim.Entries+1, func(i int) string { return fmt.Sprint(i) })
		}, tocSize(lim.Entries+1, func(i int) string { return fmt.Sprint(i) })},
		{"too many directories implied", "directories", func() *testLayer {
			deep := strings.Repeat("d/", 399)
			return fifos(lim.Entries/400+1, func(i int) string { return fmt.Sprint(i, "/", deep, "f") })
		}, 0},
	}
	o := newOpener()
	f := newFS(t, o)
	healthy := healthyLayers(t, f, o)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := tc.layer()
			o.mu.Lock()
			o.blobs[l.dgst] = l.blob
			o.mu.Unlock()
			_, _, fetchedBefore := o.counts()
			var err error
			alloc := allocatedBy(func() { err = mountErr(t, f, l) })
			requireRefused(t, err, l, tc.want)
			_, _, fetched := o.counts()
			stored := int64(len(l.blob)) - mustTOCOffset(t, l.blob)
			if fetched-fetchedBefore > min(stored, lim.TOCCompressedSize) {
				t.Errorf("Mount fetched %d bytes beyond the tail; the TOC takes %d, the limit is %d", fetched-fetchedBefore, stored, lim.TOCCompressedSize)
			}
			// The compressed TOC, the JSON it inflates to if under the
			// limit, and what counting its entries takes: a map of up to
			// lim.Entries directories.
			bound := uint64(2*min(stored, lim.TOCCompressedSize) + 2*tc.jsonSize + int64(lim.Entries)*200)
			t.Logf("Mount allocated %d MiB (bound %d MiB)", alloc>>20, bound>>20)
			if alloc > bound {
				t.Errorf("Mount allocated %d MiB, more than %d MiB", alloc>>20, bound>>20)
			}
		})
	}
	healthy()
}

// TestHostileTOCWork mounts layers whose TOC is within the size limits but
// would take time or memory out of proportion to its size to index: each
// Mount fails at once, and the layers mounted before and after read right.
func TestHostileTOCWork(t *testing.T) {
	lim := DefaultLimits()
	base := hostileBase(t)
	cases := []struct {
		name, want string
		edit       func(toc *estargz.JTOC)
	}{
		// Each hardlink of a chain is resolved through the whole chain,
		// with a map of what it visited: quadratic time and memory.
		{"long hardlink chain", "hardlink", func(toc *estargz.JTOC) {
			prev := "data/small"
			for i := range 5000 {
				name := fmt.Sprintf("data/h%d", i)
				toc.Entries = append(toc.Entries, &estargz.TOCEntry{Name: name, Type: "hardlink", LinkName: prev})
				prev = name
			}
		}},
		// A few bytes of JSON per xattr, a map entry each.
		{"too many xattrs", "xattrs", func(toc *estargz.JTOC) {
			per := 4096
			for i := range lim.Entries/per + 1 {
				x := make(map[string][]byte, per)
				for j := range per {
					x[fmt.Sprintf("user.%d", j)] = nil
				}
				toc.Entries = append(toc.Entries, &estargz.TOCEntry{Name: fmt.Sprintf("data/x%d", i), Type: "fifo", Xattrs: x})
			}
		}},
	}
	o := newOpener()
	f := newFS(t, o)
	healthy := healthyLayers(t, f, o)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := editTOC(t, base, tc.edit)
			o.mu.Lock()
			o.blobs[l.dgst] = l.blob
			o.mu.Unlock()
			var err error
			began := time.Now()
			alloc := allocatedBy(func() { err = mountErr(t, f, l) })
			requireRefused(t, err, l, tc.want)
			js, _ := tocOf(t, l.blob)
			bound := uint64(2*len(js) + 64<<20)
			t.Logf("Mount took %v and allocated %d MiB (bound %d MiB)", time.Since(began), alloc>>20, bound>>20)
			if alloc > bound {
				t.Errorf("Mount allocated %d MiB, more than %d MiB", alloc>>20, bound>>20)
			}
		})
	}
	healthy()
}

// TestHostileResolution lists hostile layers among an image's layers: the
// background resolution that a Mount of the image's first layer starts
// must fail them alone, and end.
func TestHostileResolution(t *testing.T) {
	base := hostileBase(t)
	spinning := editTOC(t, base, func(toc *estargz.JTOC) {
		e := entryOf(t, toc, "etc/passwd", "reg")
		e.ChunkOffset, e.ChunkSize = -64, 32
	})
	panicking := editTOC(t, base, func(toc *estargz.JTOC) {
		toc.Entries = append(toc.Entries, nil)
	})
	o := newOpener(spinning, panicking)
	f := newFS(t, o)
	healthy := healthyLayers(t, f, o)
	first := buildLayer(t, []tarEntry{file("first", 0o644, []byte("first"))})
	o.blobs[first.dgst] = first.blob
	labels := first.labels()
	labels[LabelImageLayers] = strings.Join([]string{first.dgst.String(), spinning.dgst.String(), panicking.dgst.String()}, ",")
	mp := mountpoint(t)
	if err := f.Mount(context.Background(), mp, labels); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the background resolution of the hostile layers", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.pending) == 0
	})
	requireRefused(t, mountErr(t, f, spinning), spinning, `"etc/passwd"`)
	requireRefused(t, mountErr(t, f, panicking), panicking, "null")
	checkContent(t, mp+"/first", []byte("first"))
	healthy()
}

// TestResolveAheadBounded lists many layers among an image's layers, as a
// label may, none of which is then mounted (a pull that fails half way, a
// label listing layers the image does not unpack): the TOCs the
// FileSystem holds for layers resolved ahead of their mount stay within
// twice the largest TOC allowed, and a layer left unresolved for that
// resolves at its own mount.
func TestResolveAheadBounded(t *testing.T) {
	lim := DefaultLimits()
	lim.TOCSize = 64 << 10
	var layers []*testLayer
	list := []string{}
	for i := range 8 {
		var es []tarEntry
		for j := range 150 {
			es = append(es, file(fmt.Sprintf("d%d/file-with-a-long-name-%04d", i, j), 0o644, []byte{byte(j)}))
		}
		l := buildLayer(t, es)
		if js, _ := tocOf(t, l.blob); len(js) < 30<<10 || len(js) > int(lim.TOCSize) {
			t.Fatalf("TOC of %d bytes: the test needs 30 KiB to %d", len(js), lim.TOCSize)
		}
		layers = append(layers, l)
		list = append(list, l.dgst.String())
	}
	first := buildLayer(t, []tarEntry{file("first", 0o644, []byte("first"))})
	o := newOpener(append(layers, first)...)
	f := newFS(t, o, WithLimits(lim))
	labels := first.labels()
	labels[LabelImageLayers] = first.dgst.String() + "," + strings.Join(list, ",")
	if err := f.Mount(context.Background(), mountpoint(t), labels); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the background resolution", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.pending) == 0
	})
	f.mu.Lock()
	ahead := f.aheadLocked()
	f.mu.Unlock()
	t.Logf("%d bytes of TOC held for layers resolved ahead, bound %d", ahead, f.aheadCap())
	if ahead > f.aheadCap() {
		t.Errorf("%d bytes of TOC held for layers resolved ahead, more than %d", ahead, f.aheadCap())
	}
	for _, l := range layers {
		checkContent(t, filepath.Join(mountLayer(t, f, l), strings.SplitN(l.entries[0].hdr.Name, "/", 2)[0], "file-with-a-long-name-0000"), []byte{0})
	}
}
