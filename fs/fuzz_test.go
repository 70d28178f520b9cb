package fs

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
)

// The fuzz targets feed the parsing of a layer's footer and TOC, and its
// indexing, what a layer's author may write, and check that whatever it is,
// parsing ends soon, stays within the limits, and what it accepts can be
// read: `make fuzz` runs each for a while. Their seeds are the hostile
// layers of the tests, in testdata/fuzz (written by TestFuzzCorpus with
// LAZYPULL_WRITE_FUZZ_CORPUS=1), and a real layer.

// fuzzLimits are small, so that inputs of a few KiB reach every limit.
var fuzzLimits = Limits{
	TOCCompressedSize: 64 << 10, TOCSize: 256 << 10, Entries: 1024,
	NameLength: 512, PathDepth: 16, ChunkSize: 256 << 10,
}

// FuzzFooter parses the footer and the TOC of a blob's tail.
func FuzzFooter(f *testing.F) {
	f.Add(hostileBase(f).blob)
	f.Fuzz(func(t *testing.T, blob []byte) {
		sr := io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob)))
		r, entries, off, err := openTOC(sr, fuzzLimits, nil)
		if err != nil {
			return
		}
		if off < 0 || off > int64(len(blob)) || r == nil || len(entries) > fuzzLimits.Entries {
			t.Fatalf("TOC at %d of a %d-byte blob, %d entries", off, len(blob), len(entries))
		}
	})
}

// FuzzTOC decodes and checks TOC JSON.
func FuzzTOC(f *testing.F) {
	js, _ := tocOf(f, hostileBase(f).blob)
	f.Add(js)
	f.Fuzz(func(t *testing.T, js []byte) {
		_, entries, err := decodeTOC(js, 1<<20, fuzzLimits)
		if err != nil {
			return
		}
		if len(entries) > fuzzLimits.Entries {
			t.Fatalf("%d entries accepted", len(entries))
		}
		for _, e := range entries {
			for k := range e.Xattrs {
				if !servedXattr(k) {
					t.Fatalf("xattr %q kept", k)
				}
			}
		}
	})
}

// FuzzIndex indexes TOC JSON for a blob whose payload ends at payloadEnd,
// and reads every file of an accepted TOC the way a read does: from chunk
// to chunk, each inside the payload, within the limits, covering the file.
func FuzzIndex(f *testing.F) {
	base := hostileBase(f)
	js, tocOff := tocOf(f, base.blob)
	f.Add(js, tocOff)
	f.Fuzz(func(t *testing.T, js []byte, payloadEnd int64) {
		if payloadEnd < 0 || payloadEnd > 1<<40 {
			return
		}
		r, entries, err := decodeTOC(js, payloadEnd+estargz.FooterSize, fuzzLimits)
		if err != nil {
			return
		}
		src := &source{r: r, payloadEnd: payloadEnd}
		if src.buildIndex(len(entries)) != nil || src.buildChunks(entries, fuzzLimits) != nil {
			return
		}
		for _, c := range src.chunks.cs {
			if c.start < 0 || c.end <= c.start || c.end > payloadEnd || c.end-c.start > fuzzLimits.ChunkSize || c.size > fuzzLimits.ChunkSize {
				t.Fatalf("chunk %+v in a payload of %d", c, payloadEnd)
			}
		}
		l := &layer{src: src}
		for e := range src.ino {
			if e.Type != "reg" || e.Size == 0 {
				continue
			}
			for _, off := range []int64{0, e.Size / 2, e.Size - 1} {
				cs, err := l.chunks(e, off, e.Size)
				if err != nil {
					t.Fatalf("%s at %d: %v", e.Name, off, err)
				}
				at := off
				for _, c := range cs {
					if c.off > at || c.off+c.size <= at {
						t.Fatalf("%s at %d: chunk [%d, %d) does not hold %d", e.Name, off, c.off, c.off+c.size, at)
					}
					at = c.off + c.size
				}
				if at != e.Size {
					t.Fatalf("%s at %d: chunks end at %d of %d", e.Name, off, at, e.Size)
				}
			}
		}
	})
}

// TestFuzzCorpus checks that the seed corpus holds the hostile layers of
// the tests; with LAZYPULL_WRITE_FUZZ_CORPUS=1 it writes it.
func TestFuzzCorpus(t *testing.T) {
	base := hostileBase(t)
	_, tocOff := tocOf(t, base.blob)
	seeds := map[string]map[string][]any{"FuzzFooter": {}, "FuzzTOC": {}, "FuzzIndex": {}}
	for _, tc := range hostileTOCCases() {
		l := editTOC(t, base, func(toc *estargz.JTOC) { tc.edit(t, toc) })
		js, _ := tocOf(t, l.blob)
		name := strings.ReplaceAll(tc.name, " ", "_")
		seeds["FuzzTOC"][name] = []any{js}
		seeds["FuzzIndex"][name] = []any{js, tocOff}
	}
	deep := []byte(`{"version":1,"entries":[],"x":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + "}")
	seeds["FuzzTOC"]["JSON_nested_deep"] = []any{deep}
	var many strings.Builder
	many.WriteString(`{"version":1,"entries":[`)
	for i := range fuzzLimits.Entries + 1 {
		fmt.Fprintf(&many, `{"name":"%d","type":"fifo"},`, i)
	}
	seeds["FuzzTOC"]["too_many_entries"] = []any{[]byte(strings.TrimSuffix(many.String(), ",") + "]}")}
	// The blob's tail: its TOC, whose footer points at the start of the
	// blob, or whose tar header says it inflates beyond the limit.
	tail := func(b []byte) []byte { return b[max(0, len(b)-int(fuzzLimits.TOCCompressedSize+(8<<10))):] }
	seeds["FuzzFooter"]["footer_points_at_the_start"] = []any{append(bytes.Clone(base.blob[:8<<10]), footerAt(0)...)}
	seeds["FuzzFooter"]["footer_points_past_the_end"] = []any{append(bytes.Clone(base.blob[:8<<10]), footerAt(1<<40)...)}
	seeds["FuzzFooter"]["footer_negative"] = []any{append(bytes.Clone(base.blob[:8<<10]), footerAt(-1)...)}
	tiny := buildLayer(t, []tarEntry{file("f", 0o644, []byte("f"))})
	seeds["FuzzFooter"]["TOC_inflates_beyond_the_limit"] = []any{tail(streamedLayer(t, tiny, fuzzLimits.TOCSize+1,
		writeEntries(1, func(int) string { return "f" }, fuzzLimits.TOCSize+1)).blob)}

	write := os.Getenv("LAZYPULL_WRITE_FUZZ_CORPUS") == "1"
	for target, byName := range seeds {
		for name, args := range byName {
			p := filepath.Join("testdata", "fuzz", target, name)
			data := corpusFile(args...)
			if write {
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, data, 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			got, err := os.ReadFile(p)
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("%s is missing or out of date (%v): run this test with LAZYPULL_WRITE_FUZZ_CORPUS=1", p, err)
			}
		}
	}
}

// corpusFile is a file of Go's fuzzing corpus holding args.
func corpusFile(args ...any) []byte {
	var b strings.Builder
	b.WriteString("go test fuzz v1\n")
	for _, a := range args {
		switch a := a.(type) {
		case []byte:
			fmt.Fprintf(&b, "[]byte(%s)\n", strconv.Quote(string(a)))
		case int64:
			fmt.Fprintf(&b, "int64(%d)\n", a)
		}
	}
	return []byte(b.String())
}
