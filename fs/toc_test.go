package fs

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

// TestOpenTOC checks that a layer's tree, chunks and TOC digest are those
// estargz.Open reads.
func TestOpenTOC(t *testing.T) {
	layers := map[string]*testLayer{
		"full": fullLayer(t),
		"prioritized": buildLayer(t, append(libEntries(20), file("first", 0o644, []byte("1"))),
			estargz.WithPrioritizedFiles([]string{"first", "lib/m007.py"}), estargz.WithChunkSize(4<<10)),
	}
	for name, l := range layers {
		t.Run(name, func(t *testing.T) {
			sr := io.NewSectionReader(bytes.NewReader(l.blob), 0, int64(len(l.blob)))
			want, err := estargz.Open(sr)
			if err != nil {
				t.Fatal(err)
			}
			wantOff, _, err := estargz.OpenFooter(sr)
			if err != nil {
				t.Fatal(err)
			}
			got, _, off, err := openTOC(sr, DefaultLimits(), nil)
			if err != nil {
				t.Fatal(err)
			}
			if off != wantOff {
				t.Errorf("TOC offset %d, want %d", off, wantOff)
			}
			if got.TOCDigest() != l.toc || want.TOCDigest() != l.toc {
				t.Errorf("TOC digest %s, estargz's %s, want %s", got.TOCDigest(), want.TOCDigest(), l.toc)
			}
			if _, err := got.VerifyTOC(l.toc); err != nil {
				t.Errorf("VerifyTOC: %v", err)
			}
			wantRoot, _ := want.Lookup("")
			gotRoot, _ := got.Lookup("")
			// The whole tree: every entry's fields, its children, link
			// counts, modification time and next offset.
			if !reflect.DeepEqual(gotRoot, wantRoot) {
				t.Fatal("tree differs from estargz's")
			}
			walk(wantRoot, func(p string, e *estargz.TOCEntry) {
				for off := int64(0); off < e.Size; {
					wc, wok := want.ChunkEntryForOffset(p, off)
					gc, gok := got.ChunkEntryForOffset(p, off)
					if gok != wok || !reflect.DeepEqual(gc, wc) {
						t.Fatalf("%s: chunk at %d differs", p, off)
					}
					if !wok {
						break
					}
					off = wc.ChunkOffset + wc.ChunkSize
				}
			})
		})
	}
}

func walk(dir *estargz.TOCEntry, f func(p string, e *estargz.TOCEntry)) {
	dir.ForeachChild(func(name string, e *estargz.TOCEntry) bool {
		f(e.Name, e)
		if e.Type == "dir" {
			walk(e, f)
		}
		return true
	})
}

// TestMalformedTOC checks that a layer whose TOC is malformed is refused,
// as estargz refuses it, with the reason.
func TestMalformedTOC(t *testing.T) {
	l := fullLayer(t)
	tocOff, _, err := estargz.OpenFooter(io.NewSectionReader(bytes.NewReader(l.blob), 0, int64(len(l.blob))))
	if err != nil {
		t.Fatal(err)
	}
	footer := l.blob[len(l.blob)-estargz.FooterSize:]
	withTOC := func(toc []byte) []byte {
		return append(append(bytes.Clone(l.blob[:tocOff]), toc...), footer...)
	}
	for _, tc := range []struct {
		name, want string
		blob       []byte
	}{
		{"no footer", "footer", append(bytes.Clone(l.blob[:len(l.blob)-estargz.FooterSize]), make([]byte, estargz.FooterSize)...)},
		{"not gzip", "malformed TOC gzip header", withTOC([]byte("plain text, no gzip"))},
		{"not tar", "failed to find tar header in TOC gzip stream", withTOC(gzipBytes(t, []byte("plain text, no tar")))},
		{"other name", `TOC tar entry had name "index.json"`, withTOC(tocBytes(t, "index.json", "{}"))},
		{"bad JSON", "error decoding TOC JSON", withTOC(tocBytes(t, estargz.TOCTarName, `{"version":1,"entries":[{"name":"a",}]}`))},
		{"truncated JSON", "error decoding TOC JSON", withTOC(tocBytes(t, estargz.TOCTarName, `{"version":1,"entries":[{"name":"a"}`))},
		{"wrong type", "error decoding TOC JSON", withTOC(tocBytes(t, estargz.TOCTarName, `{"version":1,"entries":[{"name":"a","size":"big"}]}`))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sr := io.NewSectionReader(bytes.NewReader(tc.blob), 0, int64(len(tc.blob)))
			if _, err := estargz.Open(sr); err == nil {
				t.Fatal("estargz.Open accepts the blob")
			}
			_, _, _, err := openTOC(sr, DefaultLimits(), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("openTOC: %v, want an error saying %q", err, tc.want)
			}
			dgst := digest.FromBytes(tc.blob)
			blob, tail, _ := newOpener(&testLayer{blob: tc.blob, dgst: dgst}).Open(context.Background(), "", dgst, DefaultTailSize)
			_, err = parse(context.Background(), dgst, blob, tail, DefaultLimits(), nil)
			if !errdefs.IsNotImplemented(err) || !strings.Contains(err.Error(), "not an eStargz blob") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("parse: %v", err)
			}
		})
	}

	// What follows the TOC's object in its tar entry is ignored, as
	// estargz ignores it, and is part of the digest.
	js := `{"version":1,"entries":[{"name":"a","type":"reg"}]}` + "\n\n"
	blob := withTOC(tocBytes(t, estargz.TOCTarName, js))
	sr := io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob)))
	want, err := estargz.Open(sr)
	if err != nil {
		t.Fatal(err)
	}
	got, _, _, err := openTOC(sr, DefaultLimits(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.TOCDigest() != want.TOCDigest() || got.TOCDigest() != digest.FromString(js) {
		t.Errorf("TOC digest %s, estargz's %s, want %s", got.TOCDigest(), want.TOCDigest(), digest.FromString(js))
	}
}

func gzipBytes(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// tocBytes is a TOC as a blob stores it: a gzip stream of a tar of one
// file, name, holding js.
func tocBytes(t *testing.T, name, js string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o444, Size: int64(len(js))}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write([]byte(js)); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return gzipBytes(t, buf.Bytes())
}
