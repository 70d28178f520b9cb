package testimage

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Node types.
const (
	TypeDir     = "dir"
	TypeReg     = "reg"
	TypeSymlink = "symlink"
	TypeFifo    = "fifo"
	TypeChar    = "char"
	TypeBlock   = "block"
	TypeSocket  = "socket"
)

// Node is what a file system tree shows for one path.
type Node struct {
	Type string
	// Mode is the permission bits plus setuid, setgid and sticky (st_mode & 07777).
	Mode     uint32
	UID, GID int
	Size     int64  // regular files only
	Digest   string // sha256 hex of the content; regular files only
	Linkname string // symlinks only
	Xattrs   map[string]string
	// ModTime is kept for regular files and symlinks; directories are
	// touched by whatever is created in them, so their time is left zero.
	ModTime time.Time
	// HardlinkOf is, for a regular file that shares its inode with other
	// visible paths, the lexically smallest of those paths (itself
	// included); "" when the file has no other visible name.
	HardlinkOf string

	data []byte // Flatten only
	key  any    // identity for hardlink grouping
}

// Tree maps a slash-separated path relative to the root ("." for the root
// itself) to its node.
type Tree map[string]*Node

// Data returns the content of a regular file of a tree made by Flatten.
func (n *Node) Data() []byte { return n.data }

// Flatten applies layers in order, the way a container runtime unpacks them
// (OCI image spec, "Applying Changesets"), and returns the resulting tree
// without the root. It does not depend on any code that the tests check.
func Flatten(layers []Layer) (Tree, error) {
	t := Tree{}
	for i, l := range layers {
		if err := t.apply(l); err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
	}
	t.groupHardlinks()
	return t, nil
}

func (t Tree) apply(l Layer) error {
	lower := map[string]bool{}
	for p := range t {
		lower[p] = true
	}
	for _, e := range l.Entries {
		dir, base := path.Dir(e.Name), path.Base(e.Name)
		if dir != "." {
			if n, ok := t[dir]; !ok || n.Type != TypeDir {
				return fmt.Errorf("%s: parent is not a directory", e.Name)
			}
		}
		switch {
		case base == OpaqueWhiteout:
			for p := range t {
				if lower[p] && isUnder(p, dir) {
					delete(t, p)
				}
			}
			continue
		case strings.HasPrefix(base, WhiteoutPrefix):
			t.remove(path.Join(dir, strings.TrimPrefix(base, WhiteoutPrefix)))
			continue
		}
		if old, ok := t[e.Name]; ok && !(old.Type == TypeDir && e.Type == tar.TypeDir) {
			t.remove(e.Name)
		}
		n := &Node{Mode: uint32(e.Mode) & 0o7777, UID: e.UID, GID: e.GID, Xattrs: e.Xattrs}
		switch e.Type {
		case tar.TypeDir:
			n.Type = TypeDir
		case tar.TypeReg:
			n.Type, n.data, n.Size, n.ModTime = TypeReg, e.Data, int64(len(e.Data)), ModTime
			sum := sha256.Sum256(e.Data)
			n.Digest = hex.EncodeToString(sum[:])
			n.key = n
		case tar.TypeSymlink:
			n.Type, n.Linkname, n.Mode, n.ModTime = TypeSymlink, e.Linkname, 0o777, ModTime
		case tar.TypeFifo:
			n.Type, n.ModTime = TypeFifo, ModTime
		case tar.TypeLink:
			target, ok := t[e.Linkname]
			if !ok || target.Type != TypeReg {
				return fmt.Errorf("%s: hardlink target %s is not a regular file", e.Name, e.Linkname)
			}
			n = target
		default:
			return fmt.Errorf("%s: unsupported type %q", e.Name, e.Type)
		}
		t[e.Name] = n
	}
	return nil
}

func (t Tree) remove(p string) {
	for q := range t {
		if q == p || isUnder(q, p) {
			delete(t, q)
		}
	}
}

func isUnder(p, dir string) bool {
	return dir == "." || strings.HasPrefix(p, dir+"/")
}

// groupHardlinks sets HardlinkOf from the nodes' identity keys. Flatten
// shares one *Node among hardlinked paths, so it copies the nodes first.
func (t Tree) groupHardlinks() {
	groups := map[any][]string{}
	for p, n := range t {
		if n.Type == TypeReg && n.key != nil {
			groups[n.key] = append(groups[n.key], p)
		}
	}
	for _, paths := range groups {
		sort.Strings(paths)
		for _, p := range paths {
			c := *t[p]
			c.HardlinkOf = ""
			if len(paths) > 1 {
				c.HardlinkOf = paths[0]
			}
			t[p] = &c
		}
	}
}

// Paths returns the tree's paths in lexical order.
func (t Tree) Paths() []string {
	ps := make([]string, 0, len(t))
	for p := range t {
		ps = append(ps, p)
	}
	sort.Strings(ps)
	return ps
}

// ReadTree walks the tree rooted at root without following symlinks and
// records every path, the root included as ".". Extended attributes named
// security.selinux are ignored because the host adds them.
func ReadTree(root string) (Tree, error) {
	t := Tree{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		n, err := readNode(p)
		if err != nil {
			return err
		}
		t[filepath.ToSlash(rel)] = n
		return nil
	})
	if err != nil {
		return nil, err
	}
	t.groupHardlinks()
	return t, nil
}

type inodeKey struct{ dev, ino uint64 }

func readNode(p string) (*Node, error) {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return nil, &os.PathError{Op: "lstat", Path: p, Err: err}
	}
	n := &Node{Mode: st.Mode & 0o7777, UID: int(st.Uid), GID: int(st.Gid)}
	mtime := time.Unix(st.Mtim.Unix()).UTC()
	switch st.Mode & syscall.S_IFMT {
	case syscall.S_IFDIR:
		n.Type = TypeDir
	case syscall.S_IFREG:
		n.Type, n.Size, n.ModTime = TypeReg, st.Size, mtime
		n.key = inodeKey{st.Dev, st.Ino}
		d, err := digestFile(p)
		if err != nil {
			return nil, err
		}
		n.Digest = d
	case syscall.S_IFLNK:
		target, err := os.Readlink(p)
		if err != nil {
			return nil, err
		}
		n.Type, n.Linkname, n.ModTime = TypeSymlink, target, mtime
	case syscall.S_IFIFO:
		n.Type, n.ModTime = TypeFifo, mtime
	case syscall.S_IFCHR:
		n.Type = TypeChar
	case syscall.S_IFBLK:
		n.Type = TypeBlock
	case syscall.S_IFSOCK:
		n.Type = TypeSocket
	default:
		return nil, fmt.Errorf("%s: unknown file type %o", p, st.Mode)
	}
	x, err := readXattrs(p)
	if err != nil {
		return nil, err
	}
	n.Xattrs = x
	return n, nil
}

func digestFile(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func readXattrs(p string) (map[string]string, error) {
	buf := make([]byte, 4096)
	for {
		sz, err := unix.Llistxattr(p, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, len(buf)*4)
			continue
		}
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		if err != nil {
			return nil, &os.PathError{Op: "llistxattr", Path: p, Err: err}
		}
		buf = buf[:sz]
		break
	}
	var x map[string]string
	for _, name := range strings.Split(string(buf), "\x00") {
		if name == "" || name == "security.selinux" {
			continue
		}
		val, err := getXattr(p, name)
		if err != nil {
			return nil, err
		}
		if x == nil {
			x = map[string]string{}
		}
		x[name] = val
	}
	return x, nil
}

func getXattr(p, name string) (string, error) {
	buf := make([]byte, 256)
	for {
		sz, err := unix.Lgetxattr(p, name, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, len(buf)*4)
			continue
		}
		if err != nil {
			return "", &os.PathError{Op: "lgetxattr " + name, Path: p, Err: err}
		}
		return string(buf[:sz]), nil
	}
}

// Diff compares two trees and describes every difference, one line per path
// and field; nil means equal. Paths missing from one side are reported
// without further detail.
func Diff(want, got Tree) []string {
	var out []string
	for _, p := range want.Paths() {
		g, ok := got[p]
		if !ok {
			out = append(out, fmt.Sprintf("%s: missing (want %s)", p, want[p].Type))
			continue
		}
		for _, d := range want[p].diff(g) {
			out = append(out, p+": "+d)
		}
	}
	for _, p := range got.Paths() {
		if _, ok := want[p]; !ok {
			out = append(out, fmt.Sprintf("%s: unexpected %s", p, got[p].Type))
		}
	}
	return out
}

func (n *Node) diff(g *Node) []string {
	var d []string
	field := func(name string, want, got any) {
		if want != got {
			d = append(d, fmt.Sprintf("%s: want %v, got %v", name, want, got))
		}
	}
	field("type", n.Type, g.Type)
	if n.Type != g.Type {
		return d
	}
	field("mode", fmt.Sprintf("%04o", n.Mode), fmt.Sprintf("%04o", g.Mode))
	field("uid", n.UID, g.UID)
	field("gid", n.GID, g.GID)
	field("size", n.Size, g.Size)
	field("digest", n.Digest, g.Digest)
	field("symlink target", n.Linkname, g.Linkname)
	field("hardlink group", n.HardlinkOf, g.HardlinkOf)
	if !n.ModTime.Equal(g.ModTime) {
		d = append(d, fmt.Sprintf("mtime: want %v, got %v", n.ModTime, g.ModTime))
	}
	if fmt.Sprint(sortedXattrs(n.Xattrs)) != fmt.Sprint(sortedXattrs(g.Xattrs)) {
		d = append(d, fmt.Sprintf("xattrs: want %q, got %q", sortedXattrs(n.Xattrs), sortedXattrs(g.Xattrs)))
	}
	return d
}

func sortedXattrs(x map[string]string) []string {
	var s []string
	for k, v := range x {
		s = append(s, k+"="+v)
	}
	sort.Strings(s)
	return s
}
