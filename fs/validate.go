package fs

import (
	"bytes"
	"fmt"
	"math"
	"path"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
)

// A TOC is checked before anything is sized, allocated or looked up from
// it, in three steps: its JSON before it is decoded (scanTOCJSON), its
// entries before estargz indexes them (checkTOC), and each file's chunks
// against the blob once the TOC is indexed (buildChunks). Whatever its
// content, none of them allocates more than a small multiple of the TOC's
// size or takes more than about linear time.

// Bounds that the kernel sets on what a filesystem serves.
const (
	maxNameComponent = 255   // NAME_MAX
	maxLinkTarget    = 4095  // PATH_MAX, less the NUL
	maxXattrName     = 255   // XATTR_NAME_MAX
	maxXattrValue    = 65536 // XATTR_SIZE_MAX
	maxXattrList     = 65536 // XATTR_LIST_MAX
	maxID            = math.MaxUint32
	// maxMode is what the 8-byte octal mode field of a tar header holds.
	maxMode = 0o7777777
	// maxHardlinkHops bounds a chain of hardlinks to hardlinks, each of
	// which estargz resolves by walking the chain.
	maxHardlinkHops = 8
	// maxJSONDepth bounds the nesting of the TOC's JSON, which a TOC uses
	// 4 levels of: the decoder recurses once per level, and a goroutine
	// out of stack is a crash no recover catches.
	maxJSONDepth = 16
)

// refusal says why a TOC is refused: a limit it exceeds, or a field that
// cannot be used as it is.
type refusal struct{ msg string }

func (r *refusal) Error() string { return r.msg }

func refuse(format string, args ...any) error {
	return &refusal{fmt.Sprintf(format, args...)}
}

// entryRef names entry i of a TOC, its name cut short if long.
func entryRef(i int, name string) string {
	const most = 128
	if len(name) > most {
		return fmt.Sprintf("entry %d (%q...)", i, name[:most])
	}
	return fmt.Sprintf("entry %d (%q)", i, name)
}

// scanTOCJSON bounds what decoding js may allocate, before it is decoded:
// an entry costs hundreds of bytes decoded but 3 of JSON ("{},"), an
// xattr a map entry for a few bytes. It counts, without decoding, the
// elements of the arrays directly in the top object (the entries, and the
// elements of any other such array) and the members of objects directly in
// them (xattrs, and those of anything else that deep), and the nesting.
func scanTOCJSON(js []byte, lim Limits) error {
	var stack [maxJSONDepth]byte
	depth, entries, members := 0, 0, 0
	for i := 0; i < len(js); i++ {
		switch c := js[i]; c {
		case '"':
			i = stringEnd(js, i)
		case '{', '[':
			if depth == maxJSONDepth {
				return refuse("JSON nested more than %d deep", maxJSONDepth)
			}
			stack[depth] = c
			depth++
			fallthrough
		case ',':
			switch {
			case depth == 2 && stack[1] == '[':
				entries++
			case depth == 4 && stack[3] == '{':
				members++
			}
		case '}', ']':
			depth = max(depth-1, 0)
		}
	}
	// An opening bracket counts the first element, a comma the next: an
	// empty container counts one too many, which is fine for a bound.
	if entries > lim.Entries {
		return refuse("more than %d entries (limit max_toc_entries)", lim.Entries)
	}
	if members > lim.Entries {
		return refuse("more than %d xattrs (limit max_toc_entries)", lim.Entries)
	}
	return nil
}

// stringEnd returns the index of the quote that ends the JSON string that
// starts at js[i], or len(js).
func stringEnd(js []byte, i int) int {
	for j := i + 1; ; {
		k := bytes.IndexByte(js[j:], '"')
		if k < 0 {
			return len(js)
		}
		q := j + k
		n := 0
		for p := q - 1; p > i && js[p] == '\\'; p-- {
			n++
		}
		if n%2 == 0 {
			return q
		}
		j = q + 1
	}
}

// tocCheck is checkTOC's state: what estargz.Open will make of the
// entries, worked out without indexing them.
type tocCheck struct {
	lim     Limits
	entries []*estargz.TOCEntry
	names   []string       // cleaned, by index; "" for chunks (and the root)
	final   map[string]int // name -> index of its last entry, as estargz keeps it
	// runs holds, by file name, the entries [from, to) of the last file of
	// that name stored in several chunks: estargz's list of its chunks.
	runs   map[string][2]int
	run    string // the file whose chunks may follow; "" if none may
	xattrs int
}

// checkTOC checks the entries of a decoded TOC before estargz.Open indexes
// them: every field is in range, every name is a sane path under a
// directory, hardlinks lead to files, the TOC implies no more entries than
// the limit, and the chunks of every file cover it exactly, in order.
// Duplicate names are left to estargz: the last entry of a name is the one
// served, and a check of a name is of what estargz will serve for it.
func checkTOC(entries []*estargz.TOCEntry, lim Limits) error {
	if len(entries) > lim.Entries {
		return refuse("%d entries, more than %d (limit max_toc_entries)", len(entries), lim.Entries)
	}
	v := &tocCheck{
		lim: lim, entries: entries, names: make([]string, len(entries)),
		final: make(map[string]int, len(entries)), runs: map[string][2]int{},
	}
	for i, e := range entries {
		if e == nil {
			return refuse("entry %d is null", i)
		}
		if err := v.entry(i, e); err != nil {
			return err
		}
	}
	if err := v.tree(); err != nil {
		return err
	}
	if err := v.hardlinks(); err != nil {
		return err
	}
	return v.files()
}

// entry checks entry i's own fields and records where it goes.
func (v *tocCheck) entry(i int, e *estargz.TOCEntry) error {
	if e.Type == "chunk" {
		if v.run == "" {
			return refuse("entry %d: a chunk that does not follow a file stored in several chunks", i)
		}
		r := v.runs[v.run]
		v.runs[v.run] = [2]int{r[0], i + 1}
		return v.fields(i, v.run, e)
	}
	if len(e.Name) > v.lim.NameLength {
		return refuse("%s: name of %d bytes, longer than %d (limit max_name_length)", entryRef(i, e.Name), len(e.Name), v.lim.NameLength)
	}
	name := cleanName(e.Name)
	ref := entryRef(i, name)
	if err := v.path(ref, name); err != nil {
		return err
	}
	switch e.Type {
	case "dir", "reg", "symlink", "hardlink", "char", "block", "fifo":
	default:
		return refuse("%s: unknown type %q", ref, e.Type)
	}
	if err := v.fields(i, name, e); err != nil {
		return err
	}
	switch {
	case e.Type == "symlink" && len(e.LinkName) > maxLinkTarget:
		return refuse("%s: symlink target of %d bytes, longer than %d", ref, len(e.LinkName), maxLinkTarget)
	case e.Type == "hardlink" && len(e.LinkName) > v.lim.NameLength:
		return refuse("%s: hardlink target of %d bytes, longer than %d (limit max_name_length)", ref, len(e.LinkName), v.lim.NameLength)
	case strings.IndexByte(e.LinkName, 0) >= 0:
		return refuse("%s: NUL in link target", ref)
	}
	if err := v.entryXattrs(ref, e); err != nil {
		return err
	}
	v.names[i], v.final[name], v.run = name, i, ""
	if e.Type == "reg" && e.ChunkSize > 0 && e.ChunkSize < e.Size {
		// estargz makes room for the file's chunks from these two fields.
		if e.Size/e.ChunkSize > int64(len(v.entries)) {
			return refuse("%s: %d bytes in chunks of %d, more chunks than the TOC has entries", ref, e.Size, e.ChunkSize)
		}
		v.runs[name], v.run = [2]int{i, i + 1}, name
	}
	return nil
}

// cleanName is an entry's name as estargz cleans it, relative to the root,
// without allocating for the names of the layers estargz builds ("a/b",
// "a/b/" for a directory).
func cleanName(name string) string {
	trimmed := strings.TrimSuffix(name, "/")
	for rest := trimmed; ; {
		c, after, more := strings.Cut(rest, "/")
		if c == "" || c == "." || c == ".." {
			return strings.TrimPrefix(path.Clean("/"+name), "/")
		}
		if !more {
			return trimmed
		}
		rest = after
	}
}

// path checks a cleaned entry name.
func (v *tocCheck) path(ref, name string) error {
	if strings.IndexByte(name, 0) >= 0 {
		return refuse("%s: NUL in name", ref)
	}
	depth := 0
	for rest := name; rest != ""; depth++ {
		c, after, _ := strings.Cut(rest, "/")
		if len(c) > maxNameComponent {
			return refuse("%s: name component of %d bytes, longer than %d", ref, len(c), maxNameComponent)
		}
		rest = after
	}
	if depth > v.lim.PathDepth {
		return refuse("%s: path %d components deep, deeper than %d (limit max_path_depth)", ref, depth, v.lim.PathDepth)
	}
	return nil
}

// fields checks entry i's numbers.
func (v *tocCheck) fields(i int, name string, e *estargz.TOCEntry) error {
	var bad string
	switch {
	case e.Size < 0:
		bad = fmt.Sprintf("negative size %d", e.Size)
	case e.Offset < 0 || e.InnerOffset < 0:
		bad = fmt.Sprintf("negative blob offset %d+%d", e.Offset, e.InnerOffset)
	case e.ChunkOffset < 0:
		bad = fmt.Sprintf("negative chunk offset %d", e.ChunkOffset)
	case e.ChunkSize < 0:
		bad = fmt.Sprintf("negative chunk size %d", e.ChunkSize)
	case e.ChunkSize > v.lim.ChunkSize:
		bad = fmt.Sprintf("chunk of %d bytes, larger than %d (limit max_chunk_size)", e.ChunkSize, v.lim.ChunkSize)
	case e.Mode < 0 || e.Mode > maxMode:
		bad = fmt.Sprintf("mode %#o out of range", e.Mode)
	case e.UID < 0 || e.UID > maxID || e.GID < 0 || e.GID > maxID:
		bad = fmt.Sprintf("uid %d or gid %d out of range", e.UID, e.GID)
	case e.DevMajor < 0 || e.DevMajor > maxID || e.DevMinor < 0 || e.DevMinor > maxID:
		bad = fmt.Sprintf("device number %d:%d out of range", e.DevMajor, e.DevMinor)
	default:
		return nil
	}
	return refuse("%s: %s", entryRef(i, name), bad)
}

// entryXattrs checks the xattrs of an entry against the kernel's bounds
// and counts them.
func (v *tocCheck) entryXattrs(ref string, e *estargz.TOCEntry) error {
	list := 0
	for k, val := range e.Xattrs {
		switch {
		case k == "" || len(k) > maxXattrName || strings.IndexByte(k, 0) >= 0:
			return refuse("%s: xattr name %q empty, longer than %d bytes or with a NUL", ref, k[:min(len(k), 64)], maxXattrName)
		case len(val) > maxXattrValue:
			return refuse("%s: xattr %q of %d bytes, larger than %d", ref, k, len(val), maxXattrValue)
		}
		list += len(k) + 1
	}
	if list > maxXattrList {
		return refuse("%s: xattr names of %d bytes together, more than %d", ref, list, maxXattrList)
	}
	v.xattrs += len(e.Xattrs)
	if v.xattrs > v.lim.Entries {
		return refuse("%s: more than %d xattrs in the TOC (limit max_toc_entries)", ref, v.lim.Entries)
	}
	return nil
}

// tree checks that the root and every entry's parent is a directory, and
// counts the directories that estargz creates for paths whose parents have
// no entry.
func (v *tocCheck) tree() error {
	if i, ok := v.final[""]; ok && v.entries[i].Type != "dir" {
		return refuse("%s: the root is a %s, not a directory", entryRef(i, ""), v.entries[i].Type)
	}
	implied := map[string]struct{}{}
	for i, e := range v.entries {
		if e.Type == "chunk" {
			continue
		}
		for name := v.names[i]; name != ""; {
			p, _ := path.Split(name)
			p = strings.TrimSuffix(p, "/")
			if j, ok := v.final[p]; ok {
				if v.entries[j].Type != "dir" {
					return refuse("%s: parent %s is a %s, not a directory", entryRef(i, v.names[i]), entryRef(j, p), v.entries[j].Type)
				}
				break
			}
			if _, ok := implied[p]; ok {
				break
			}
			implied[p] = struct{}{}
			if len(v.final)+len(implied) > v.lim.Entries {
				return refuse("more than %d entries with the directories their paths imply (limit max_toc_entries)", v.lim.Entries)
			}
			name = p
		}
	}
	return nil
}

// hardlinks checks that every hardlink leads, in a few hops, to an entry
// of the layer that is not a directory.
func (v *tocCheck) hardlinks() error {
	for i, e := range v.entries {
		if e.Type != "hardlink" {
			continue
		}
		cur := e
		for hops := 0; cur.Type == "hardlink"; hops++ {
			if hops == maxHardlinkHops {
				return refuse("%s: hardlink chain longer than %d", entryRef(i, v.names[i]), maxHardlinkHops)
			}
			target := cleanName(cur.LinkName)
			j, ok := v.final[target]
			if !ok {
				return refuse("%s: hardlink to %q, which the layer does not hold", entryRef(i, v.names[i]), target)
			}
			cur = v.entries[j]
		}
		if cur.Type == "dir" {
			return refuse("%s: hardlink to a directory", entryRef(i, v.names[i]))
		}
	}
	return nil
}

// files checks that the chunks estargz will find for each regular file
// cover it exactly, in order: what every read's walk from chunk to chunk
// relies on to end.
func (v *tocCheck) files() error {
	for name, i := range v.final {
		f := v.entries[i]
		if f.Type != "reg" || f.Size == 0 {
			continue
		}
		from, to := i, i+1
		if r, ok := v.runs[name]; ok && r[1]-r[0] >= 2 {
			from, to = r[0], r[1]
		}
		var covered int64
		for k := from; k < to; k++ {
			c := v.entries[k]
			size := c.ChunkSize // as estargz completes it
			if c.Type == "chunk" && size == 0 {
				size = v.entries[from].Size - c.ChunkOffset
			}
			if size == 0 {
				size = c.Size
			}
			switch {
			case c.ChunkOffset != covered:
				return refuse("%s: chunk at file offset %d, where %d was expected", entryRef(i, name), c.ChunkOffset, covered)
			case size <= 0 || size > f.Size-covered:
				return refuse("%s: chunk of %d bytes at offset %d of a %d-byte file", entryRef(i, name), size, covered, f.Size)
			}
			covered += size
		}
		if covered != f.Size {
			return refuse("%s: chunks cover %d bytes of a %d-byte file", entryRef(i, name), covered, f.Size)
		}
	}
	return nil
}
