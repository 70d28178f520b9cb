package fs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

// SizedOpener is an Opener that can also open a blob of a known size
// without a round trip. With one, a layer the FileSystem has mounted before
// is mounted again - after a restart of the process serving it, or a
// reboot - from the TOC it stored, without the network.
type SizedOpener interface {
	Opener
	// OpenSized returns the blob; the registry is first asked when it is read.
	OpenSized(ctx context.Context, ref string, dgst digest.Digest, size int64) (Blob, error)
}

// tocMagic starts a stored TOC's header line.
const tocMagic = "lazypull-toc/v1"

// maxStoredTOC bounds the stored TOC that load reads, as a blob's TOC is
// bounded by what the TOC parser accepts.
const maxStoredTOC = 256 << 20

// tocStore keeps, per layer digest, what a Mount needs of a layer without
// the network: the blob's size and its bytes from the TOC to the end (the
// compressed TOC and the footer). A stored TOC is no more trusted than one
// from the registry: it is parsed and checked against the TOC digest of
// the Mount's labels like one. Files are written whole and renamed into
// place, so processes sharing the directory see a whole file or none.
//
// The file is <dir>/<algorithm>/<encoded digest>: one header line,
// "lazypull-toc/v1 <blob size>", then the bytes.
type tocStore struct {
	dir string
}

func (s *tocStore) path(dgst digest.Digest) (string, error) {
	if err := dgst.Validate(); err != nil {
		return "", err
	}
	return filepath.Join(s.dir, dgst.Algorithm().String(), dgst.Encoded()), nil
}

// save stores the tail of layer dgst's blob of size bytes, which starts
// with its TOC.
func (s *tocStore) save(dgst digest.Digest, size int64, tail []byte) error {
	p, err := s.path(dgst)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	err = replaceFile(p, func(w io.Writer) error {
		bw := bufio.NewWriter(w)
		fmt.Fprintf(bw, "%s %d\n", tocMagic, size)
		if _, err := bw.Write(tail); err != nil {
			return err
		}
		return bw.Flush()
	})
	if err != nil {
		return fmt.Errorf("store TOC of layer %s: %w", dgst, err)
	}
	return nil
}

// replaceFile replaces the file at p with what write writes, atomically:
// processes that share the directory see the whole file or the one before.
func replaceFile(p string, write func(io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(p), ".tmp-")
	if err != nil {
		return err
	}
	err = write(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), p)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// load returns the blob size and tail stored for dgst. A missing entry is
// an error matching fs.ErrNotExist.
func (s *tocStore) load(dgst digest.Digest) (int64, []byte, error) {
	p, err := s.path(dgst)
	if err != nil {
		return 0, nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	r := bufio.NewReader(io.LimitReader(f, maxStoredTOC))
	line, err := r.ReadString('\n')
	if err != nil {
		return 0, nil, fmt.Errorf("stored TOC %s: header: %w", p, err)
	}
	magic, sz, _ := strings.Cut(strings.TrimSuffix(line, "\n"), " ")
	size, err := strconv.ParseInt(sz, 10, 64)
	if magic != tocMagic || err != nil || size < estargz.FooterSize {
		return 0, nil, fmt.Errorf("stored TOC %s: bad header %q", p, line)
	}
	var tail bytes.Buffer
	if _, err := tail.ReadFrom(r); err != nil {
		return 0, nil, fmt.Errorf("stored TOC %s: %w", p, err)
	}
	if int64(tail.Len()) > size || tail.Len() < estargz.FooterSize {
		return 0, nil, fmt.Errorf("stored TOC %s: %d bytes for a blob of %d", p, tail.Len(), size)
	}
	return size, tail.Bytes(), nil
}

// remove drops what is stored for dgst.
func (s *tocStore) remove(dgst digest.Digest) {
	p, err := s.path(dgst)
	if err != nil {
		return
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.L.WithError(err).WithField("layer", dgst).Warn("remove stored TOC")
	}
}

// openStored resolves dgst from its stored TOC, if the opener can open a
// blob without a round trip and a TOC is stored. ok is false when it
// cannot; a stored TOC that does not parse is removed.
func (f *FileSystem) openStored(ctx context.Context, ref string, dgst digest.Digest) (src *source, ok bool) {
	so, isSized := f.opener.(SizedOpener)
	if !isSized {
		return nil, false
	}
	size, tail, err := f.tocs.load(dgst)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false
	}
	if err == nil {
		var blob Blob
		if blob, err = so.OpenSized(ctx, ref, dgst, size); err == nil {
			src, err = parse(ctx, dgst, blob, tail, f.cfg.limits, f.parsing)
		}
	}
	if err != nil {
		log.G(ctx).WithError(err).WithField("layer", dgst).Warn("stored TOC unusable; fetching it again")
		f.tocs.remove(dgst)
		return nil, false
	}
	src.stored = true
	return src, true
}

// storeTOC stores src's TOC, once, if it came from the registry.
func (f *FileSystem) storeTOC(ctx context.Context, src *source) {
	src.storeOnce.Do(func() {
		tail := src.tocTail
		src.tocTail = nil
		if src.stored || tail == nil {
			return
		}
		if err := f.tocs.save(src.dgst, src.blob.Size(), tail); err != nil {
			log.G(ctx).WithError(err).WithField("layer", src.dgst).Warn("layer will need the registry to be mounted again")
		}
	})
}
