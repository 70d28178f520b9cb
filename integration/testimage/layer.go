// Package testimage builds lazypull's own multi-layer test image from
// generated files, pushes it to a registry and says what the container's root
// filesystem must look like afterwards.
//
// The layers exercise what a snapshotter can get wrong: whiteouts of files and
// directories, opaque directories, hardlinks, symlinks (relative, absolute,
// dangling), user.* xattrs, a file larger than 8 MiB, thousands of small files,
// setuid/setgid bits, unusual directory modes, non-root owners, a fifo, and
// type changes between layers. Layers are plain values ([]Layer) so that other
// tests can re-encode them (for example as eStargz) and still use Flatten for
// the expected result.
package testimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"path"
	"strings"
	"time"
)

// ModTime is the modification time of every entry the package generates.
var ModTime = time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)

// Whiteout prefixes as defined by the OCI image spec.
const (
	WhiteoutPrefix = ".wh."
	OpaqueWhiteout = ".wh..wh..opq"
)

// Entry is one tar entry of a layer.
type Entry struct {
	// Name is the slash-separated path relative to the root, without a
	// leading "/" or "./" and without a trailing "/".
	Name string
	// Type is a tar type flag: tar.TypeReg, TypeDir, TypeSymlink, TypeLink
	// (hardlink; Linkname is the target's Name) or TypeFifo.
	Type byte
	// Mode holds the permission bits plus setuid (04000), setgid (02000)
	// and sticky (01000).
	Mode     int64
	UID, GID int
	Linkname string
	// Xattrs are written as PAX "SCHILY.xattr.<name>" records.
	Xattrs map[string]string
	Data   []byte
}

// Layer is an ordered list of entries, written to tar in this order.
type Layer struct {
	Entries []Entry
}

// Tar returns the uncompressed tar stream of l. A hardlink's header carries
// the mode, owner and xattrs of its target, as tar(1) writes them (runtimes
// apply them to the shared inode).
func (l Layer) Tar() ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	seen := map[string]Entry{}
	for _, e := range l.Entries {
		if e.Type == tar.TypeLink {
			target, ok := seen[e.Linkname]
			if !ok {
				return nil, fmt.Errorf("%s: hardlink target %s is not earlier in the layer", e.Name, e.Linkname)
			}
			e.Mode, e.UID, e.GID, e.Xattrs = target.Mode, target.UID, target.GID, target.Xattrs
		}
		seen[e.Name] = e
		hdr, err := e.header()
		if err != nil {
			return nil, err
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("%s: %w", e.Name, err)
		}
		if e.Type == tar.TypeReg {
			if _, err := tw.Write(e.Data); err != nil {
				return nil, fmt.Errorf("%s: %w", e.Name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Gzip returns the gzip-compressed tar stream of l. The output is
// deterministic for a given l.
func (l Layer) Gzip() ([]byte, error) {
	raw, err := l.Tar()
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(raw); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func (e Entry) header() (*tar.Header, error) {
	if e.Name == "" || strings.HasPrefix(e.Name, "/") || strings.HasSuffix(e.Name, "/") || path.Clean(e.Name) != e.Name {
		return nil, fmt.Errorf("entry name %q is not a clean relative path", e.Name)
	}
	hdr := &tar.Header{
		Typeflag: e.Type,
		Name:     e.Name,
		Linkname: e.Linkname,
		Mode:     e.Mode,
		Uid:      e.UID,
		Gid:      e.GID,
		ModTime:  ModTime,
		Format:   tar.FormatPAX,
	}
	switch e.Type {
	case tar.TypeDir:
		hdr.Name += "/"
	case tar.TypeReg:
		hdr.Size = int64(len(e.Data))
	case tar.TypeSymlink, tar.TypeLink:
		if e.Linkname == "" {
			return nil, fmt.Errorf("%s: link without target", e.Name)
		}
	case tar.TypeFifo:
	default:
		return nil, fmt.Errorf("%s: unsupported type %q", e.Name, e.Type)
	}
	if len(e.Xattrs) > 0 {
		hdr.PAXRecords = map[string]string{}
		for k, v := range e.Xattrs {
			hdr.PAXRecords["SCHILY.xattr."+k] = v
		}
	}
	return hdr, nil
}

// Dir, File, Symlink, Hardlink, Whiteout and Opaque are shorthands for
// building entries owned by root.

// Dir returns a directory entry.
func Dir(name string, mode int64) Entry {
	return Entry{Name: name, Type: tar.TypeDir, Mode: mode}
}

// File returns a regular file entry.
func File(name string, mode int64, data []byte) Entry {
	return Entry{Name: name, Type: tar.TypeReg, Mode: mode, Data: data}
}

// Symlink returns a symbolic link entry pointing at target.
func Symlink(name, target string) Entry {
	return Entry{Name: name, Type: tar.TypeSymlink, Mode: 0o777, Linkname: target}
}

// Hardlink returns a hardlink entry to the entry named target, which must
// come earlier in the same layer.
func Hardlink(name, target string) Entry {
	return Entry{Name: name, Type: tar.TypeLink, Linkname: target}
}

// Whiteout returns the entry that deletes name (and, for a directory,
// everything under it) from the layers below.
func Whiteout(name string) Entry {
	return Entry{Name: path.Join(path.Dir(name), WhiteoutPrefix+path.Base(name)), Type: tar.TypeReg, Mode: 0o644}
}

// Opaque returns the entry that hides everything the layers below hold
// under dir.
func Opaque(dir string) Entry {
	return Entry{Name: path.Join(dir, OpaqueWhiteout), Type: tar.TypeReg, Mode: 0o644}
}
