package fs

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

// Hostile layers are built the way their author would: a real eStargz
// payload with a TOC of the author's choosing, published with the TOC's
// correct digest, so that only lazypull's own checks stand in the way.

// tocOf returns the TOC JSON of an eStargz blob and the offset of its TOC.
func tocOf(t testing.TB, blob []byte) ([]byte, int64) {
	t.Helper()
	tocOff, _, err := estargz.OpenFooter(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))))
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(blob[tocOff : len(blob)-estargz.FooterSize]))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	if _, err := tr.Next(); err != nil {
		t.Fatal(err)
	}
	js, err := io.ReadAll(tr)
	if err != nil {
		t.Fatal(err)
	}
	return js, tocOff
}

// withTOC returns base's payload followed by TOC JSON js, gzip'd the way a
// blob stores it, and a footer pointing at it.
func withTOC(t testing.TB, base *testLayer, js []byte) *testLayer {
	t.Helper()
	_, tocOff := tocOf(t, base.blob)
	blob := append(bytes.Clone(base.blob[:tocOff]), storedTOC(t, js)...)
	blob = append(blob, footerAt(tocOff)...)
	return &testLayer{blob: blob, dgst: digest.FromBytes(blob), toc: digest.FromBytes(js)}
}

// editTOC returns base with its TOC changed by edit.
func editTOC(t testing.TB, base *testLayer, edit func(toc *estargz.JTOC)) *testLayer {
	t.Helper()
	js, _ := tocOf(t, base.blob)
	var toc estargz.JTOC
	if err := json.Unmarshal(js, &toc); err != nil {
		t.Fatal(err)
	}
	edit(&toc)
	js, err := json.Marshal(&toc)
	if err != nil {
		t.Fatal(err)
	}
	return withTOC(t, base, js)
}

// entryOf returns the first entry of toc named name (of type typ if not "").
func entryOf(t testing.TB, toc *estargz.JTOC, name, typ string) *estargz.TOCEntry {
	t.Helper()
	for _, e := range toc.Entries {
		if e.Name == name && (typ == "" || e.Type == typ) {
			return e
		}
	}
	t.Fatalf("no entry %q of type %q in the TOC", name, typ)
	return nil
}

// chunksOf returns the entries holding the content of file name, in TOC order.
func chunksOf(toc *estargz.JTOC, name string) []*estargz.TOCEntry {
	var out []*estargz.TOCEntry
	in := false
	for _, e := range toc.Entries {
		switch {
		case e.Type == "reg" && e.Name == name:
			out, in = append(out[:0], e), true
		case e.Type == "chunk" && in:
			out = append(out, e)
		default:
			in = false
		}
	}
	return out
}

// storedTOC is TOC JSON js as a blob stores it: a gzip stream of a tar of
// one file.
func storedTOC(t testing.TB, js []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: estargz.TOCTarName, Mode: 0o444, Size: int64(len(js))}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(js); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// footerAt is an eStargz footer that puts the TOC at off.
func footerAt(off int64) []byte {
	sub := fmt.Sprintf("%016xSTARGZ", off)
	extra := append([]byte{'S', 'G', 0, 0}, sub...)
	binary.LittleEndian.PutUint16(extra[2:4], uint16(len(sub)))
	return estargz.CreateGzipFooter(extra)
}

// healthyLayers mounts a layer on f and returns a check that it still
// reads right, and that another layer can still be mounted and read: what
// a hostile layer must not disturb.
func healthyLayers(t *testing.T, f *FileSystem, o *testOpener) func() {
	t.Helper()
	before := fullLayer(t)
	after := buildLayer(t, []tarEntry{dir("etc/", 0o755), file("etc/passwd", 0o644, []byte("root:x:0:0::/root:/bin/sh\n"))})
	o.mu.Lock()
	o.blobs[before.dgst], o.blobs[after.dgst] = before.blob, after.blob
	o.mu.Unlock()
	mp := mountLayer(t, f, before)
	return func() {
		t.Helper()
		checkContent(t, filepath.Join(mp, "a/text"), []byte("hello, lazy world\n"))
		checkContent(t, filepath.Join(mp, "big"), randomBytes(2, 10<<20))
		mp2 := mountLayer(t, f, after)
		checkContent(t, filepath.Join(mp2, "etc/passwd"), []byte("root:x:0:0::/root:/bin/sh\n"))
	}
}

// allocatedBy returns how many bytes the process allocated while fn ran.
func allocatedBy(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// mountErr mounts l on f and returns Mount's error, unmounting if it
// succeeded.
func mountErr(t *testing.T, f *FileSystem, l *testLayer) error {
	t.Helper()
	mp := mountpoint(t)
	err := f.Mount(context.Background(), mp, l.labels())
	if err == nil {
		t.Cleanup(func() {
			if err := f.Unmount(context.Background(), mp); err != nil {
				t.Errorf("Unmount: %v", err)
			}
		})
	}
	return err
}

// streamedLayer is base's payload followed by a TOC of size bytes that
// write produces, without holding it in memory: a TOC far larger than
// what it is stored in.
func streamedLayer(t testing.TB, base *testLayer, size int64, write func(w *bufio.Writer) error) *testLayer {
	t.Helper()
	_, tocOff := tocOf(t, base.blob)
	var buf bytes.Buffer
	buf.Write(base.blob[:tocOff])
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: estargz.TOCTarName, Mode: 0o444, Size: size}); err != nil {
		t.Fatal(err)
	}
	d := digest.Canonical.Digester()
	cw := &countingWriter{w: io.MultiWriter(tw, d.Hash())}
	bw := bufio.NewWriterSize(cw, 1<<20)
	if err := write(bw); err != nil {
		t.Fatal(err)
	}
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
	if cw.n != size {
		t.Fatalf("TOC of %d bytes, want %d", cw.n, size)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	buf.Write(footerAt(tocOff))
	blob := buf.Bytes()
	return &testLayer{blob: blob, dgst: digest.FromBytes(blob), toc: d.Digest()}
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// mustTOCOffset returns where the footer of blob says its TOC starts.
func mustTOCOffset(t testing.TB, blob []byte) int64 {
	t.Helper()
	off, _, err := estargz.OpenFooter(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))))
	if err != nil {
		t.Fatal(err)
	}
	return off
}
