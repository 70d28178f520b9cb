package main

import (
	"archive/tar"
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"strings"

	"github.com/klauspost/compress/gzip"
)

// dpkgInfo is where dpkg keeps, per package, the list of its files
// (<package>[:<arch>].list) and its other control files.
const dpkgInfo = "var/lib/dpkg/info"

// owners records, per path that some dpkg package lists (clean, relative,
// "." for the root), whether packages matching the split expression own it,
// other packages, or both.
type owners struct {
	split *regexp.Regexp
	paths map[string]owner
}

type owner uint8

const (
	ownedBySplit owner = 1 << iota
	ownedByOther
)

// readOwners reads the dpkg file lists of the rootfs tar.
func readOwners(rootfs string, split *regexp.Regexp) (*owners, error) {
	f, err := os.Open(rootfs)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	o := &owners{split: split, paths: map[string]owner{}}
	tr := tar.NewReader(bufio.NewReaderSize(f, 1<<20))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", rootfs, err)
		}
		p := clean(hdr.Name)
		if hdr.Typeflag != tar.TypeReg || path.Dir(p) != dpkgInfo || path.Ext(p) != ".list" {
			continue
		}
		if err := o.addList(packageOf(path.Base(p)), tr); err != nil {
			return nil, fmt.Errorf("%s: %s: %w", rootfs, p, err)
		}
	}
	if len(o.paths) == 0 {
		return nil, fmt.Errorf("%s: no dpkg file lists in %s; is it a Debian root filesystem?", rootfs, dpkgInfo)
	}
	return o, nil
}

// addList records the paths of a dpkg .list file (absolute paths, one a
// line, "/." for the root) as owned by pkg.
func (o *owners) addList(pkg string, r io.Reader) error {
	bit := ownedByOther
	if o.split.MatchString(pkg) {
		bit = ownedBySplit
	}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			o.paths[clean(line)] |= bit
		}
	}
	return sc.Err()
}

// upper reports whether p belongs in the upper layer: its nearest listed
// ancestor (itself included) is owned by split packages only, or it is a
// dpkg control file of a split package. Files that no package lists (byte
// code compiled at install time, say) follow the directory they are in.
func (o *owners) upper(p string) bool {
	if path.Dir(p) == dpkgInfo {
		return o.split.MatchString(packageOf(path.Base(p)))
	}
	for {
		if own, ok := o.paths[p]; ok {
			return own == ownedBySplit
		}
		if p == "." {
			return false
		}
		p = path.Dir(p)
	}
}

// packageOf returns the package a dpkg control file name belongs to:
// "python3.11-minimal.list" -> "python3.11-minimal",
// "libpython3.11-stdlib:amd64.md5sums" -> "libpython3.11-stdlib".
func packageOf(file string) string {
	pkg := strings.TrimSuffix(file, path.Ext(file))
	pkg, _, _ = strings.Cut(pkg, ":")
	return pkg
}

// clean turns "./usr/bin/", "/usr/bin" and "usr/bin" into "usr/bin", and
// the root into ".".
func clean(name string) string {
	p := path.Clean("/" + name)
	if p == "/" {
		return "."
	}
	return p[1:]
}

// layerWriter writes one gzip'd layer tar, adding the headers of the
// parent directories of each entry (taken from the source tar) before it
// when the layer does not hold them yet.
type layerWriter struct {
	f       *os.File
	gz      *gzip.Writer
	tw      *tar.Writer
	written map[string]bool
	files   int
}

func newLayerWriter(file string) (*layerWriter, error) {
	f, err := os.Create(file)
	if err != nil {
		return nil, err
	}
	gz := gzip.NewWriter(f)
	return &layerWriter{f: f, gz: gz, tw: tar.NewWriter(gz), written: map[string]bool{".": true}}, nil
}

func (w *layerWriter) write(hdr *tar.Header, body io.Reader, dirs map[string]*tar.Header) error {
	p := hdr.Name
	var parents []string
	for d := path.Dir(p); !w.written[d]; d = path.Dir(d) {
		parents = append(parents, d)
	}
	for i := len(parents) - 1; i >= 0; i-- {
		dh, ok := dirs[parents[i]]
		if !ok {
			return fmt.Errorf("%s comes before its directory %s", p, parents[i])
		}
		if err := w.tw.WriteHeader(dh); err != nil {
			return err
		}
		w.written[parents[i]] = true
	}
	if err := w.tw.WriteHeader(hdr); err != nil {
		return err
	}
	if hdr.Typeflag == tar.TypeDir {
		w.written[p] = true
	} else {
		w.files++
	}
	if body != nil && hdr.Typeflag == tar.TypeReg {
		if _, err := io.Copy(w.tw, body); err != nil {
			return err
		}
	}
	return nil
}

// close finishes the layer and returns its compressed size.
func (w *layerWriter) close() (int64, error) {
	err := errors.Join(w.tw.Close(), w.gz.Close())
	if err == nil {
		err = w.f.Sync()
	}
	var size int64
	if st, serr := w.f.Stat(); serr == nil {
		size = st.Size()
	}
	return size, errors.Join(err, w.f.Close())
}

type splitStats struct {
	baseFiles, upperFiles int
	baseSize, upperSize   int64
	tarBytes              int64 // uncompressed payload, both layers
}

// splitLayers writes the entries of the rootfs tar into the base or the
// upper layer. A hard link goes where its target went.
func splitLayers(rootfs string, o *owners, basePath, upperPath string) (*splitStats, error) {
	f, err := os.Open(rootfs)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	base, err := newLayerWriter(basePath)
	if err != nil {
		return nil, err
	}
	upper, err := newLayerWriter(upperPath)
	if err != nil {
		base.close()
		return nil, err
	}
	st := &splitStats{}
	err = copyEntries(tar.NewReader(bufio.NewReaderSize(f, 1<<20)), o, base, upper, st)
	var cerr error
	st.baseSize, cerr = base.close()
	err = errors.Join(err, cerr)
	st.upperSize, cerr = upper.close()
	err = errors.Join(err, cerr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", rootfs, err)
	}
	st.baseFiles, st.upperFiles = base.files, upper.files
	return st, nil
}

func copyEntries(tr *tar.Reader, o *owners, base, upper *layerWriter, st *splitStats) error {
	dirs := map[string]*tar.Header{}
	inUpper := map[string]bool{} // regular files, for hard links
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		hdr.Name = clean(hdr.Name)
		if hdr.Name == "." {
			continue
		}
		hdr.Format = tar.FormatUnknown // let the writer pick what the header needs
		var up bool
		switch hdr.Typeflag {
		case tar.TypeLink:
			hdr.Linkname = clean(hdr.Linkname)
			up = inUpper[hdr.Linkname]
		case tar.TypeDir:
			dirs[hdr.Name] = hdr
			up = o.upper(hdr.Name)
		default:
			up = o.upper(hdr.Name)
			if hdr.Typeflag == tar.TypeReg {
				inUpper[hdr.Name] = up
				st.tarBytes += hdr.Size
			}
		}
		w := base
		if up {
			w = upper
		}
		if err := w.write(hdr, tr, dirs); err != nil {
			return err
		}
	}
}
