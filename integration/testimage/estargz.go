package testimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"

	"github.com/containerd/stargz-snapshotter/estargz"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
)

// EStargzLayer is an eStargz layer blob and the digest of its TOC JSON, as
// its manifest annotation states it. Its TOC need not be one estargz would
// write: tests make hostile layers by replacing it, with its digest, as
// whoever publishes an image may.
type EStargzLayer struct {
	Blob []byte
	TOC  digest.Digest
}

// EStargz returns l built as an eStargz layer.
func EStargz(l Layer, opts ...estargz.Option) (EStargzLayer, error) {
	raw, err := l.Tar()
	if err != nil {
		return EStargzLayer{}, err
	}
	b, err := estargz.Build(io.NewSectionReader(bytes.NewReader(raw), 0, int64(len(raw))), opts...)
	if err != nil {
		return EStargzLayer{}, err
	}
	defer b.Close()
	blob, err := io.ReadAll(b)
	if err != nil {
		return EStargzLayer{}, err
	}
	return EStargzLayer{Blob: blob, TOC: b.TOCDigest()}, nil
}

// TOCJSON returns the layer's TOC JSON and the offset where it starts.
func (l EStargzLayer) TOCJSON() ([]byte, int64, error) {
	off, _, err := estargz.OpenFooter(io.NewSectionReader(bytes.NewReader(l.Blob), 0, int64(len(l.Blob))))
	if err != nil {
		return nil, 0, err
	}
	zr, err := gzip.NewReader(bytes.NewReader(l.Blob[off : int64(len(l.Blob))-estargz.FooterSize]))
	if err != nil {
		return nil, 0, err
	}
	tr := tar.NewReader(zr)
	if _, err := tr.Next(); err != nil {
		return nil, 0, err
	}
	js, err := io.ReadAll(tr)
	return js, off, err
}

// EditTOC returns l with its TOC changed by edit.
func (l EStargzLayer) EditTOC(edit func(toc *estargz.JTOC)) (EStargzLayer, error) {
	js, _, err := l.TOCJSON()
	if err != nil {
		return EStargzLayer{}, err
	}
	var toc estargz.JTOC
	if err := json.Unmarshal(js, &toc); err != nil {
		return EStargzLayer{}, err
	}
	edit(&toc)
	if js, err = json.Marshal(&toc); err != nil {
		return EStargzLayer{}, err
	}
	return l.WithTOC(int64(len(js)), bytes.NewReader(js))
}

// WithTOC returns l with the size bytes of TOC JSON js in place of its TOC,
// stored as the blob stores it: a gzip stream of a tar of one file. js may
// be far larger than what it is stored in; it is not held in memory.
func (l EStargzLayer) WithTOC(size int64, js io.Reader) (EStargzLayer, error) {
	_, off, err := l.TOCJSON()
	if err != nil {
		return EStargzLayer{}, err
	}
	var buf bytes.Buffer
	buf.Write(l.Blob[:off])
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return EStargzLayer{}, err
	}
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: estargz.TOCTarName, Mode: 0o444, Size: size}); err != nil {
		return EStargzLayer{}, err
	}
	d := digest.Canonical.Digester()
	if n, err := io.Copy(io.MultiWriter(tw, d.Hash()), js); err != nil || n != size {
		return EStargzLayer{}, fmt.Errorf("TOC of %d bytes, want %d: %v", n, size, err)
	}
	if err := tw.Close(); err != nil {
		return EStargzLayer{}, err
	}
	if err := zw.Close(); err != nil {
		return EStargzLayer{}, err
	}
	buf.Write(FooterAt(off))
	return EStargzLayer{Blob: buf.Bytes(), TOC: d.Digest()}, nil
}

// FooterAt is an eStargz footer that puts the TOC at off.
func FooterAt(off int64) []byte {
	sub := fmt.Sprintf("%016xSTARGZ", off)
	extra := append([]byte{'S', 'G', 0, 0}, sub...)
	binary.LittleEndian.PutUint16(extra[2:4], uint16(len(sub)))
	return estargz.CreateGzipFooter(extra)
}

// EStargzImage assembles an OCI image for the running platform from eStargz
// layers, each annotated with its TOC digest, with the given entrypoint.
func EStargzImage(layers []EStargzLayer, entrypoint []string) (v1.Image, error) {
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	for i, l := range layers {
		blob := l.Blob
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(blob)), nil
		}, tarball.WithMediaType(types.OCILayer))
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		img, err = mutate.Append(img, mutate.Addendum{
			Layer: layer, MediaType: types.OCILayer,
			Annotations: map[string]string{estargz.TOCJSONDigestAnnotation: l.TOC.String()},
		})
		if err != nil {
			return nil, err
		}
	}
	return withEntrypoint(img, entrypoint)
}
