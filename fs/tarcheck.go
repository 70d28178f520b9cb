package fs

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"maps"
	"strings"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

// maxKeptChunk bounds the chunks tarCheck hands to its keep function: a
// larger one (which no eStargz builder writes) is only hashed.
const maxKeptChunk = 16 << 20

// tarCheck checks that a layer's tar, as the DiffID names it, holds what
// the layer's FUSE filesystem serves from its TOC: the same entries in the
// same order with the same name, type, size, mode, owner, modification
// time (to the second), link target, device numbers and xattrs, and each
// regular file's content, split at the TOC's chunk boundaries, hashing to
// the digests the TOC gives its chunks (the digests every chunk served is
// checked against) and to its file digest. The tar's last entry must be
// the TOC itself, with the TOC's digest.
type tarCheck struct {
	r       *estargz.Reader
	entries []*estargz.TOCEntry // the TOC's, in its order
	toc     digest.Digest       // digest of the TOC's JSON
	// keep, if set, gets each chunk of up to maxKeptChunk bytes once its
	// digest matched.
	keep func(ce *estargz.TOCEntry, data []byte)

	next int // the next entry of entries to match
	// served holds, by name, the chunk entries checked of the last regular
	// file of that name: the file the mount serves under that name.
	served map[string][]*estargz.TOCEntry
	buf    []byte
}

// run reads the tar to its end. The error says which entry differs and how.
func (c *tarCheck) run(tr *tar.Reader) error {
	c.served = map[string][]*estargz.TOCEntry{}
	sawTOC := false
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("tar: %w", err)
		}
		if sawTOC {
			return fmt.Errorf("tar entry %q after the TOC", h.Name)
		}
		if cleanName(h.Name) == estargz.TOCTarName {
			if err := c.checkTOC(tr); err != nil {
				return err
			}
			sawTOC = true
			continue
		}
		if err := c.entry(tr, h); err != nil {
			return err
		}
	}
	if c.next < len(c.entries) {
		return fmt.Errorf("TOC entry %q is not in the tar", c.entries[c.next].Name)
	}
	if !sawTOC {
		return errors.New("the tar does not end with the TOC")
	}
	return c.checkServed()
}

// checkTOC hashes the TOC entry's content.
func (c *tarCheck) checkTOC(tr *tar.Reader) error {
	d := digest.Canonical.Digester()
	if _, err := io.Copy(d.Hash(), tr); err != nil {
		return fmt.Errorf("tar: TOC: %w", err)
	}
	if got := d.Digest(); got != c.toc {
		return fmt.Errorf("the tar's TOC has digest %s, the TOC served from has %s", got, c.toc)
	}
	return nil
}

// entry checks tar entry h against the next entry of the TOC and, for a
// regular file, its content against the TOC's chunks of it.
func (c *tarCheck) entry(tr *tar.Reader, h *tar.Header) error {
	if c.next >= len(c.entries) {
		return fmt.Errorf("tar entry %q is not in the TOC", h.Name)
	}
	e := c.entries[c.next]
	c.next++
	name := cleanName(h.Name)
	if e.Name != name {
		return fmt.Errorf("tar entry %q where the TOC has %q", name, e.Name)
	}
	if err := sameHeader(e, h); err != nil {
		return fmt.Errorf("entry %q: %w", name, err)
	}
	if e.Type != "reg" {
		return nil
	}
	chunks := []*estargz.TOCEntry{e}
	for c.next < len(c.entries) && c.entries[c.next].Type == "chunk" {
		chunks = append(chunks, c.entries[c.next])
		c.next++
	}
	if err := c.content(tr, e, chunks); err != nil {
		return fmt.Errorf("entry %q: %w", name, err)
	}
	if e.Size > 0 {
		c.served[name] = chunks
	} else {
		delete(c.served, name)
	}
	return nil
}

// content reads a regular file's payload from tr and checks it against the
// digests of the file and of its chunks.
func (c *tarCheck) content(tr *tar.Reader, e *estargz.TOCEntry, chunks []*estargz.TOCEntry) error {
	file := digest.Canonical.Digester()
	var off int64
	for _, ce := range chunks {
		if e.Size == 0 {
			break
		}
		if ce.ChunkOffset != off || ce.ChunkSize <= 0 || ce.ChunkSize > e.Size-off {
			return fmt.Errorf("chunk at offset %d of size %d does not continue the chunks before it (%d bytes)", ce.ChunkOffset, ce.ChunkSize, off)
		}
		want := ce.ChunkDigest
		if want == "" && ce.ChunkSize == e.Size {
			want = e.Digest // as the chunk is verified when served
		}
		d, err := digest.Parse(want)
		if err != nil {
			return fmt.Errorf("chunk at offset %d: no usable digest (%q) to tie it to the tar", off, want)
		}
		v := d.Verifier()
		w := io.MultiWriter(v, file.Hash())
		var data []byte
		if c.keep != nil && ce.ChunkSize <= maxKeptChunk {
			if int64(cap(c.buf)) < ce.ChunkSize {
				c.buf = make([]byte, ce.ChunkSize)
			}
			data = c.buf[:ce.ChunkSize]
			_, err = io.ReadFull(tr, data)
			if err == nil {
				_, err = w.Write(data)
			}
		} else {
			_, err = io.CopyN(w, tr, ce.ChunkSize)
		}
		if err != nil {
			return fmt.Errorf("tar: %w", err)
		}
		if !v.Verified() {
			return fmt.Errorf("content at offset %d does not match the TOC's chunk digest %s", off, d)
		}
		if data != nil {
			c.keep(ce, data)
		}
		off += ce.ChunkSize
	}
	if off != e.Size {
		return fmt.Errorf("the TOC's chunks cover %d of its %d bytes", off, e.Size)
	}
	if e.Digest != "" && e.Size > 0 && file.Digest().String() != e.Digest {
		return fmt.Errorf("content does not match the TOC's file digest %s", e.Digest)
	}
	return nil
}

// checkServed checks that the chunks a mount serves for each regular file
// (which it finds by name and offset) are those checked against the tar.
func (c *tarCheck) checkServed() error {
	for name, chunks := range c.served {
		for _, ce := range chunks {
			got, ok := c.r.ChunkEntryForOffset(name, ce.ChunkOffset)
			if !ok || got != ce {
				return fmt.Errorf("entry %q: the chunk served at offset %d is not the one in the tar", name, ce.ChunkOffset)
			}
		}
	}
	return nil
}

// sameHeader compares what a mount serves of TOC entry e with tar header h.
func sameHeader(e *estargz.TOCEntry, h *tar.Header) error {
	typ, ok := tarTypes[h.Typeflag]
	if !ok {
		return fmt.Errorf("tar type %q has no TOC equivalent", h.Typeflag)
	}
	var diffs []string
	differ := func(field string, toc, tar any) {
		diffs = append(diffs, fmt.Sprintf("%s %v in the TOC, %v in the tar", field, toc, tar))
	}
	if e.Type != typ {
		differ("type", e.Type, typ)
	}
	if e.Mode != h.Mode {
		differ("mode", fmt.Sprintf("%o", e.Mode), fmt.Sprintf("%o", h.Mode))
	}
	if e.UID != h.Uid || e.GID != h.Gid {
		differ("owner", fmt.Sprintf("%d:%d", e.UID, e.GID), fmt.Sprintf("%d:%d", h.Uid, h.Gid))
	}
	if typ == "reg" && e.Size != h.Size {
		differ("size", e.Size, h.Size)
	}
	if e.LinkName != h.Linkname {
		differ("link target", e.LinkName, h.Linkname)
	}
	if (typ == "char" || typ == "block") && (int64(e.DevMajor) != h.Devmajor || int64(e.DevMinor) != h.Devminor) {
		differ("device", fmt.Sprintf("%d,%d", e.DevMajor, e.DevMinor), fmt.Sprintf("%d,%d", h.Devmajor, h.Devminor))
	}
	if !sameModTime(e, h.ModTime) {
		differ("modification time", e.ModTime3339, h.ModTime.UTC().Format(time.RFC3339Nano))
	}
	if x := tarXattrs(h); !maps.EqualFunc(x, e.Xattrs, func(a string, b []byte) bool { return a == string(b) }) {
		differ("xattrs", len(e.Xattrs), len(x))
	}
	if len(diffs) > 0 {
		return errors.New(strings.Join(diffs, "; "))
	}
	return nil
}

var tarTypes = map[byte]string{
	tar.TypeReg: "reg", tar.TypeDir: "dir", tar.TypeSymlink: "symlink", tar.TypeLink: "hardlink",
	tar.TypeChar: "char", tar.TypeBlock: "block", tar.TypeFifo: "fifo",
}

// sameModTime compares e's modification time, which estargz keeps to the
// second and leaves out for the epoch, with the tar's.
func sameModTime(e *estargz.TOCEntry, t time.Time) bool {
	if e.ModTime3339 == "" {
		// Within the second after the epoch, which a tar writer may round up to.
		return t.IsZero() || (t.Unix() >= 0 && t.Unix() <= 1)
	}
	d := e.ModTime().Sub(t)
	return d < time.Second && d > -time.Second
}

// tarXattrs returns h's xattrs as estargz reads them, those that are
// served only: the TOC's others were dropped when it was loaded
// (dropXattrs), and what is compared is what the layer serves.
func tarXattrs(h *tar.Header) map[string]string {
	const prefix = "SCHILY.xattr."
	x := map[string]string{}
	for k, v := range h.PAXRecords {
		if name, ok := strings.CutPrefix(k, prefix); ok && servedXattr(name) {
			x[name] = v
		}
	}
	return x
}
