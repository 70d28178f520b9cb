package fs

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/klauspost/compress/gzip"
	digest "github.com/opencontainers/go-digest"
	"github.com/segmentio/encoding/json"
)

// openTOC does what estargz.Open does for a gzip eStargz blob, and returns
// the same Reader, but decodes the TOC's JSON with a decoder several times
// faster than encoding/json: for a layer of a few thousand files that
// decoding is most of the time a Mount waits for the TOC. It also returns
// the TOC's entries, in its order, and its offset, where the payload ends.
//
// The TOC digest is that of the JSON as stored, as estargz computes it. A
// malformed TOC fails where estargz fails it, for the reason estargz gives
// (though a JSON syntax error is worded by another decoder). A TOC beyond
// lim, or one whose fields estargz or the FileSystem cannot use as they
// are, fails with a *refusal before it is inflated, decoded or indexed.
// xattrs that are not served (see servedXattr) are dropped.
//
// admit, if not nil, is called with the size of the JSON before it is
// inflated; the TOC is parsed once it returns, and the release it returns
// is called once the TOC is decoded.
func openTOC(sr *io.SectionReader, lim Limits, admit func(size int64) (release func(), err error)) (r *estargz.Reader, entries []*estargz.TOCEntry, tocOff int64, err error) {
	tocOff, footerSize, err := openFooter(sr)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("footer: %v", err)
	}
	end := sr.Size() - footerSize
	if tocOff < 0 || tocOff > end {
		return nil, nil, 0, fmt.Errorf("footer: TOC offset %d outside the %d bytes before the footer", tocOff, end)
	}
	if end-tocOff > lim.TOCCompressedSize {
		return nil, nil, 0, refuse("compressed TOC of %d bytes, larger than %d (limit max_toc_compressed_size)", end-tocOff, lim.TOCCompressedSize)
	}
	compressed := make([]byte, end-tocOff)
	if _, err := sr.ReadAt(compressed, tocOff); err != nil {
		return nil, nil, 0, fmt.Errorf("error reading %d byte TOC targz: %v", len(compressed), err)
	}
	js, release, err := tocJSON(compressed, lim.TOCSize, admit)
	if err != nil {
		return nil, nil, 0, err
	}
	defer release()
	r, entries, err = decodeTOC(js, sr.Size(), lim)
	if err != nil {
		return nil, nil, 0, err
	}
	return r, entries, tocOff, nil
}

// decodeTOC decodes TOC JSON js, checks it and indexes it for a blob of
// size bytes.
func decodeTOC(js []byte, size int64, lim Limits) (*estargz.Reader, []*estargz.TOCEntry, error) {
	if err := scanTOCJSON(js, lim); err != nil {
		return nil, nil, err
	}
	toc := new(estargz.JTOC)
	// Like json.Decoder, which estargz uses, Parse ignores what follows
	// the TOC's object.
	if _, err := json.Parse(js, toc, 0); err != nil {
		return nil, nil, fmt.Errorf("error decoding TOC JSON: %v", err)
	}
	if err := checkTOC(toc.Entries, lim); err != nil {
		return nil, nil, err
	}
	dropXattrs(toc.Entries)
	d := &decodedTOC{toc: toc, dgst: digest.FromBytes(js)}
	r, err := estargz.Open(io.NewSectionReader(&hiddenFooter{size: size}, 0, size), estargz.WithDecompressors(d))
	if err != nil {
		return nil, nil, err
	}
	return r, toc.Entries, nil
}

// openFooter is estargz.OpenFooter, which panics on some malformed footers
// (v0.19.1: a gzip extra field shorter than its STARGZ subfield says it
// is): such a footer is an error.
func openFooter(sr *io.SectionReader) (tocOff, footerSize int64, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("malformed footer: %v", r)
		}
	}()
	return estargz.OpenFooter(sr)
}

// tocJSON returns the JSON of a TOC stored as the blob stores it, the one
// file of a tar in a gzip stream, failing as estargz's DecompressTOC does,
// or if the JSON is larger than most bytes: it is not inflated then.
// klauspost/compress's gzip inflates it about 20% faster than the
// standard library's.
func tocJSON(compressed []byte, most int64, admit func(int64) (func(), error)) (_ []byte, release func(), err error) {
	zr, err := gzip.NewReader(bytes.NewReader(compressed))
	if err != nil {
		return nil, nil, fmt.Errorf("malformed TOC gzip header: %v", err)
	}
	zr.Multistream(false)
	tr := tar.NewReader(zr)
	h, err := tr.Next()
	if err != nil {
		return nil, nil, fmt.Errorf("failed to find tar header in TOC gzip stream: %v", err)
	}
	if h.Name != estargz.TOCTarName {
		return nil, nil, fmt.Errorf("TOC tar entry had name %q; expected %q", h.Name, estargz.TOCTarName)
	}
	// The tar reader reads no more than the header's size, holes of a
	// sparse entry included.
	if h.Size > most {
		return nil, nil, refuse("TOC inflates to %d bytes, more than %d (limit max_toc_size)", h.Size, most)
	}
	release = func() {}
	if admit != nil {
		if release, err = admit(h.Size); err != nil {
			return nil, nil, err
		}
		defer func() {
			if err != nil {
				release()
			}
		}()
	}
	// Room for the size the header says, but no more than deflate can
	// inflate to, and for ReadFrom's last read, which finds the end.
	var js bytes.Buffer
	js.Grow(int(min(h.Size, maxInflation*int64(len(compressed)))) + bytes.MinRead)
	_, err = js.ReadFrom(tr)
	if cerr := zr.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, nil, fmt.Errorf("error decoding TOC JSON: %v", err)
	}
	return js.Bytes(), release, nil
}

// maxInflation is the largest ratio of deflate's output to its input.
const maxInflation = 1032

// decodedTOC is an estargz.Decompressor that hands estargz.Open a TOC
// decoded already. Open tries its own gzip Decompressors before those it is
// given, and they decode with encoding/json; a blob read through a
// hiddenFooter has no footer they accept, and decodedTOC's footer says that
// the TOC is not in the blob, for which Open asks ParseTOC with no reader.
// Open then builds the Reader from the TOC as it always does.
type decodedTOC struct {
	estargz.GzipDecompressor // payload
	toc                      *estargz.JTOC
	dgst                     digest.Digest
}

func (d *decodedTOC) ParseFooter([]byte) (blobPayloadSize, tocOffset, tocSize int64, err error) {
	return -1, -1, 0, nil
}

func (d *decodedTOC) ParseTOC(io.Reader) (*estargz.JTOC, digest.Digest, error) {
	return d.toc, d.dgst, nil
}

// hiddenFooter stands for a blob of size bytes in estargz.Open, which reads
// its footer and nothing else: the footer reads as zeros, which no gzip
// header is. Content is read through the layer's own fetch path, never
// through the Reader, so any other read is an error.
type hiddenFooter struct{ size int64 }

func (h *hiddenFooter) ReadAt(p []byte, off int64) (int, error) {
	if off < h.size-estargz.FooterSize || off+int64(len(p)) > h.size {
		return 0, errors.New("read of a layer's content through its TOC reader")
	}
	clear(p)
	return len(p), nil
}
