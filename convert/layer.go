package convert

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"sync/atomic"

	"github.com/containerd/stargz-snapshotter/estargz"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// LayerResult describes one layer of a converted image.
type LayerResult struct {
	// Source is the digest of the layer in the source image, SourceSize its
	// (compressed) size.
	Source     v1.Hash
	SourceSize int64
	// Digest and Size of the layer in the converted image.
	Digest v1.Hash
	Size   int64
	// DiffID is the digest of the uncompressed layer, UncompressedSize its
	// size in bytes.
	DiffID           v1.Hash
	UncompressedSize int64
	// TOCDigest is the digest of the eStargz TOC JSON (empty when not
	// Converted).
	TOCDigest string
	// Converted is false for a layer copied unchanged (non-distributable).
	Converted bool
	// Pushed is false when the destination already held the blob.
	Pushed bool
}

// layerJob converts one source layer once, however many manifests share it.
type layerJob struct {
	done chan struct{}
	res  LayerResult
	err  error
}

// layer converts src (described by desc in a manifest) and uploads the
// result to the destination repository, deduplicating by source digest.
func (c *converter) layer(ctx context.Context, src v1.Layer, desc v1.Descriptor, ev Progress) (LayerResult, error) {
	c.emit(ev, PhaseQueued, 0, 0, nil)
	c.mu.Lock()
	job, ok := c.jobs[desc.Digest]
	if !ok {
		job = &layerJob{done: make(chan struct{})}
		c.jobs[desc.Digest] = job
	}
	c.mu.Unlock()
	if ok {
		select {
		case <-job.done:
		case <-ctx.Done():
			return LayerResult{}, ctx.Err()
		}
		if job.err == nil {
			c.emit(ev, PhaseDone, job.res.Size, job.res.Size, nil)
		}
		return job.res, job.err
	}
	defer close(job.done)
	job.res, job.err = c.convertLayer(ctx, src, desc, ev)
	if job.err != nil {
		c.emit(ev, PhaseFailed, 0, 0, job.err)
	}
	return job.res, job.err
}

func (c *converter) convertLayer(ctx context.Context, src v1.Layer, desc v1.Descriptor, ev Progress) (LayerResult, error) {
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return LayerResult{}, ctx.Err()
	}
	defer func() { <-c.sem }()

	tarFile, err := c.fetch(src, ev)
	if err != nil {
		return LayerResult{}, err
	}
	defer removeFile(tarFile)

	c.emit(ev, PhaseConverting, 0, 0, nil)
	out, err := c.build(ctx, tarFile, ev)
	if err != nil {
		return LayerResult{}, err
	}
	defer removeFile(out.file)
	removeFile(tarFile) // not needed any more; free the disk space early

	c.emit(ev, PhasePushing, 0, out.size, nil)
	fl := &fileLayer{file: out.file, digest: out.digest, diffID: out.diffID, size: out.size, mediaType: types.OCILayer}
	fl.onRead = func(n int64) { c.emit(ev, PhasePushing, n, out.size, nil) }
	up, err := partial.CompressedToLayer(fl)
	if err != nil {
		return LayerResult{}, err
	}
	if err := c.pusher.Upload(ctx, c.dst.Context(), up); err != nil {
		return LayerResult{}, fmt.Errorf("push: %w", err)
	}
	c.emit(ev, PhaseDone, out.size, out.size, nil)
	return LayerResult{
		Source:           desc.Digest,
		SourceSize:       desc.Size,
		Digest:           out.digest,
		Size:             out.size,
		DiffID:           out.diffID,
		UncompressedSize: out.uncompressedSize,
		TOCDigest:        out.tocDigest,
		Converted:        true,
		Pushed:           fl.read.Load() > 0,
	}, nil
}

// fetch downloads the source layer and stores it decompressed in a
// temporary file, which the caller removes.
func (c *converter) fetch(src v1.Layer, ev Progress) (_ *os.File, rerr error) {
	c.emit(ev, PhaseFetching, 0, 0, nil)
	rc, err := src.Uncompressed()
	if err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	defer rc.Close()
	f, err := os.CreateTemp(c.tmp, "layer-*.tar")
	if err != nil {
		return nil, err
	}
	defer func() {
		if rerr != nil {
			removeFile(f)
		}
	}()
	cr := &countingReader{r: rc, fn: func(n int64) { c.emit(ev, PhaseFetching, n, 0, nil) }}
	if _, err := io.Copy(f, cr); err != nil {
		return nil, fmt.Errorf("fetch and decompress: %w", err)
	}
	return f, nil
}

type built struct {
	file             *os.File
	digest, diffID   v1.Hash
	size             int64
	uncompressedSize int64
	tocDigest        string
}

// build turns the tar in in into an eStargz blob in a new temporary file.
func (c *converter) build(ctx context.Context, in *os.File, ev Progress) (_ *built, rerr error) {
	st, err := in.Stat()
	if err != nil {
		return nil, err
	}
	sr := io.NewSectionReader(in, 0, st.Size())
	opts := []estargz.Option{estargz.WithContext(ctx)}
	if c.cfg.chunkSize > 0 {
		opts = append(opts, estargz.WithChunkSize(c.cfg.chunkSize))
	}
	if c.cfg.hasLevel {
		opts = append(opts, estargz.WithCompressionLevel(c.cfg.compressionLevel))
	}
	if len(c.cfg.prioritized) > 0 {
		present, err := presentPaths(sr, c.cfg.prioritized)
		if err != nil {
			return nil, fmt.Errorf("read tar: %w", err)
		}
		if len(present) > 0 {
			var missed []string
			opts = append(opts, estargz.WithPrioritizedFiles(present), estargz.WithAllowPrioritizeNotFound(&missed))
		}
	}
	blob, err := estargz.Build(sr, opts...)
	if err != nil {
		return nil, fmt.Errorf("build eStargz: %w", err)
	}
	out, err := os.CreateTemp(c.tmp, "estargz-*.tar.gz")
	if err != nil {
		blob.Close()
		drain(blob)
		return nil, err
	}
	defer func() {
		if rerr != nil {
			removeFile(out)
		}
	}()
	h := sha256.New()
	cw := &countingWriter{w: io.MultiWriter(out, h), fn: func(n int64) { c.emit(ev, PhaseConverting, n, 0, nil) }}
	_, err = io.Copy(cw, blob)
	if cerr := blob.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		// Closing the blob closed its files, so its producer fails on
		// its next read; drain lets it see that and exit.
		drain(blob)
		return nil, fmt.Errorf("build eStargz: %w", err)
	}
	usize, err := blob.UncompressedSize()
	if err != nil {
		return nil, fmt.Errorf("build eStargz: %w", err)
	}
	diffID, err := v1.NewHash(blob.DiffID().String())
	if err != nil {
		return nil, err
	}
	return &built{
		file:             out,
		digest:           v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))},
		diffID:           diffID,
		size:             cw.n,
		uncompressedSize: usize,
		tocDigest:        blob.TOCDigest().String(),
	}, nil
}

// presentPaths returns the entries of want that estargz can move to the
// front of the tar in sr, in the order of want: those naming an entry whose
// parent directories have entries too (estargz moves a file together with
// its parents, and adding missing ones would change the layer). A layer
// holding none of them gets the no-prefetch landmark instead of an empty
// prefetch section.
func presentPaths(sr *io.SectionReader, want []string) ([]string, error) {
	names := map[string]bool{"": true}
	tr := tar.NewReader(io.NewSectionReader(sr, 0, sr.Size()))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		names[cleanPath(h.Name)] = true
	}
	var present []string
	for _, w := range want {
		ok := true
		for p := cleanPath(w); ok && p != ""; p = cleanPath(path.Dir(p)) {
			ok = names[p]
		}
		if ok {
			present = append(present, w)
		}
	}
	return present, nil
}

// cleanPath names a path the way estargz does: relative to the root,
// without "./", "../" or a trailing slash.
func cleanPath(p string) string {
	return strings.TrimPrefix(path.Clean("/"+p), "/")
}

func drain(r io.Reader) { _, _ = io.Copy(io.Discard, r) }

func removeFile(f *os.File) {
	_ = f.Close()
	_ = os.Remove(f.Name())
}

// fileLayer is a converted layer staged in a temporary file.
type fileLayer struct {
	file      *os.File
	digest    v1.Hash
	diffID    v1.Hash
	size      int64
	mediaType types.MediaType
	onRead    func(int64)
	read      atomic.Int64
}

var (
	_ partial.CompressedLayer = (*fileLayer)(nil)
	_ partial.WithDiffID      = (*fileLayer)(nil)
)

func (l *fileLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *fileLayer) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *fileLayer) Size() (int64, error)                { return l.size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error) { return l.mediaType, nil }
func (l *fileLayer) Compressed() (io.ReadCloser, error) {
	// Each call (an upload is retried from the start) reads from offset 0.
	cr := &countingReader{r: io.NewSectionReader(l.file, 0, l.size), fn: func(n int64) {
		l.read.Store(n)
		if l.onRead != nil {
			l.onRead(n)
		}
	}}
	return io.NopCloser(cr), nil
}

// countingReader reports the running total of bytes read to fn.
type countingReader struct {
	r  io.Reader
	n  int64
	fn func(int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.n += int64(n)
		c.fn(c.n)
	}
	return n, err
}

// countingWriter reports the running total of bytes written to fn.
type countingWriter struct {
	w  io.Writer
	n  int64
	fn func(int64)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.fn(c.n)
	return n, err
}
