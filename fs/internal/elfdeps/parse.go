// Package elfdeps finds what the dynamic loader opens for an ELF file:
// its interpreter, the libraries it needs and where the loader searches
// for them. It reads the file through an io.ReaderAt, only the parts it
// parses, and knows nothing of where the file lives.
//
// What a program's start opens is worth knowing before the loader asks for
// it: the loader reads the interpreter, then each library, then their
// libraries, one read after another. The first bytes of an ELF file usually
// name all of the next step, so that it can be fetched in parallel.
package elfdeps

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Bounds on what Parse reads from a file that may be malformed or hostile.
const (
	// maxELFNeeded is the number of DT_NEEDED names kept; the rest are
	// dropped. Real programs need a few dozen.
	maxELFNeeded = 256
	// maxELFRunPath is the number of run path directories kept.
	maxELFRunPath = 256
	// maxELFName is the longest interpreter or library name: PATH_MAX.
	maxELFName = 4096
	// maxELFRunPathLen is the longest DT_RUNPATH string. Run paths of
	// Nix store directories run to several KiB.
	maxELFRunPathLen = 64 << 10
	// maxDSTExpansions bounds the directories one run path entry expands
	// to: each $LIB in it multiplies them.
	maxDSTExpansions = 16
	// elfBlock is the size of Parse's reads: a header and its program
	// headers, or a dynamic segment, in one.
	elfBlock = 64 << 10
	// maxELFRead is the largest single read, of a string table.
	maxELFRead = 4 << 20
)

// Deps is what the dynamic loader opens for an ELF file.
type Deps struct {
	// Interp is the PT_INTERP path, such as /lib64/ld-linux-x86-64.so.2;
	// "" for a static program or a library.
	Interp string
	// Needed are the DT_NEEDED names in order, at most maxELFNeeded. A
	// name with a slash is a path (relative ones to the working directory
	// of the process); one without is searched in SearchDirs.
	Needed []string
	// RunPath is DT_RUNPATH, or DT_RPATH when there is no DT_RUNPATH,
	// split on ':', with $ORIGIN and the like unexpanded; at most
	// maxELFRunPath entries.
	RunPath []string
	// Type is the file's e_type: ET_EXEC, ET_DYN (a library, or a
	// position-independent program, which has an Interp) and so on.
	Type elf.Type
	// Machine, Class, Data and Flags (e_flags) are those of the file. The
	// loader skips a library whose first four do not match the program's
	// (Flags only matter on ARM, where they tell hard from soft float).
	Machine elf.Machine
	Class   elf.Class
	Data    elf.Data
	Flags   uint32
}

// SharedObject reports whether the file is a shared library: ET_DYN
// without an interpreter, which a position-independent program has.
func (d Deps) SharedObject() bool { return d.Type == elf.ET_DYN && d.Interp == "" }

// ShortError reports that the reader ended before something Parse needs:
// it holds the first bytes of the file only (a head). Programs of more than
// a few MiB often keep their dynamic segment that far into the file,
// behind the code.
type ShortError struct {
	What string
	// Need is the head length that would hold what is missing.
	Need uint64
	// Have is where the reader ended.
	Have uint64
}

func (e *ShortError) Error() string {
	return fmt.Sprintf("elf: %s ends at byte %d, beyond the %d bytes read", e.What, e.Need, e.Have)
}

// ErrMalformed is wrapped by the errors of Parse about files that no
// amount of further bytes would make loadable.
var ErrMalformed = errors.New("malformed elf")

// Parse parses the ELF file of size bytes that r reads, for what the
// dynamic loader will open. It reads only the ELF header, the program
// headers, the PT_INTERP and PT_DYNAMIC segments and the dynamic string
// table located through the PT_LOAD segments, never the section headers,
// which lie at the end of the file; of a large program, far less than a
// head holding them would be.
//
// r may hold only the first bytes of the file (a head), ending its reads
// there with io.EOF: Parse then returns a *ShortError when it needs bytes
// beyond them. It returns ok=false and no error when the file is not ELF;
// an error that wraps ErrMalformed when the file is malformed; another
// error of r's as is. With an error the fields read before it (Type,
// Machine, Class, Data, Flags, and possibly Interp) are set; Needed and
// RunPath are only ever set in full, with a nil error. Relocatable and core
// files have no dependencies: they parse with ok=true and nothing to open.
func Parse(r io.ReaderAt, size int64) (Deps, bool, error) {
	var magic [len(elf.ELFMAG)]byte
	if _, err := r.ReadAt(magic[:], 0); err != nil || string(magic[:]) != elf.ELFMAG {
		if err != nil && !errors.Is(err, io.EOF) {
			return Deps{}, false, err
		}
		return Deps{}, false, nil
	}
	p := parser{r: r, size: uint64(max(size, 0))}
	err := p.parse()
	return p.deps, true, err
}

// elfProg is a program header of either class.
type elfProg struct {
	typ                elf.ProgType
	off, vaddr, filesz uint64
}

type parser struct {
	r    io.ReaderAt
	size uint64
	// blk is the block read last, at blkOff in the file.
	blk    []byte
	blkOff uint64
	bo     binary.ByteOrder
	deps   Deps
}

// fill returns the file's bytes [off, off+n), from the block read last
// when it holds them, else from a new block read at off. When r ends
// before off+n it returns the bytes it has and a *ShortError.
func (p *parser) fill(off, n uint64, what string) ([]byte, error) {
	end := off + n
	if end < off || end > p.size {
		return nil, fmt.Errorf("%w: %s at %#x, size %#x, beyond the file's %d bytes", ErrMalformed, what, off, n, p.size)
	}
	if off >= p.blkOff && end <= p.blkOff+uint64(len(p.blk)) {
		return p.blk[off-p.blkOff : end-p.blkOff], nil
	}
	if n > maxELFRead {
		return nil, fmt.Errorf("%w: %s of %d bytes", ErrMalformed, what, n)
	}
	buf := make([]byte, min(max(n, elfBlock), p.size-off))
	k, err := p.r.ReadAt(buf, int64(off))
	if k < len(buf) && err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("elf: read %s: %w", what, err)
	}
	p.blk, p.blkOff = buf[:k], off
	if uint64(k) < n {
		return p.blk, &ShortError{What: what, Need: end, Have: off + uint64(k)}
	}
	return p.blk[:n], nil
}

// bytes returns the file's bytes [off, off+n), or the error saying why
// there are none.
func (p *parser) bytes(off, n uint64, what string) ([]byte, error) {
	b, err := p.fill(off, n, what)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// decode fills v, an elf.Header32/64, elf.Prog32/64 or elf.Dyn32/64, from
// head at off.
func (p *parser) decode(off uint64, v any, what string) error {
	b, err := p.bytes(off, uint64(binary.Size(v)), what)
	if err != nil {
		return err
	}
	_, err = binary.Decode(b, p.bo, v)
	return err
}

func (p *parser) parse() error {
	ident, err := p.bytes(0, elf.EI_NIDENT, "ELF identification")
	if err != nil {
		return err
	}
	d := &p.deps
	d.Class = elf.Class(ident[elf.EI_CLASS])
	d.Data = elf.Data(ident[elf.EI_DATA])
	switch d.Data {
	case elf.ELFDATA2LSB:
		p.bo = binary.LittleEndian
	case elf.ELFDATA2MSB:
		p.bo = binary.BigEndian
	default:
		return fmt.Errorf("%w: data encoding %v", ErrMalformed, d.Data)
	}
	if v := elf.Version(ident[elf.EI_VERSION]); v != elf.EV_CURRENT {
		return fmt.Errorf("%w: version %v", ErrMalformed, v)
	}
	progs, err := p.progs()
	if err != nil {
		return err
	}
	var dyn *elfProg
	for i := range progs {
		switch progs[i].typ {
		case elf.PT_INTERP:
			// The kernel takes the first PT_INTERP, the loader the last
			// PT_DYNAMIC.
			if d.Interp == "" {
				if d.Interp, err = p.interp(progs[i]); err != nil {
					return err
				}
			}
		case elf.PT_DYNAMIC:
			dyn = &progs[i]
		}
	}
	if dyn == nil {
		return nil
	}
	return p.dynamic(*dyn, progs)
}

// progs reads the header and the program headers, keeping those parse
// needs.
func (p *parser) progs() ([]elfProg, error) {
	d := &p.deps
	var (
		phoff            uint64
		phentsize, phnum uint16
		progSize         int
		h64              elf.Header64
		h32              elf.Header32
	)
	switch d.Class {
	case elf.ELFCLASS64:
		if err := p.decode(0, &h64, "ELF header"); err != nil {
			return nil, err
		}
		d.Type, d.Machine, d.Flags = elf.Type(h64.Type), elf.Machine(h64.Machine), h64.Flags
		phoff, phentsize, phnum = h64.Phoff, h64.Phentsize, h64.Phnum
		progSize = binary.Size(elf.Prog64{})
	case elf.ELFCLASS32:
		if err := p.decode(0, &h32, "ELF header"); err != nil {
			return nil, err
		}
		d.Type, d.Machine, d.Flags = elf.Type(h32.Type), elf.Machine(h32.Machine), h32.Flags
		phoff, phentsize, phnum = uint64(h32.Phoff), h32.Phentsize, h32.Phnum
		progSize = binary.Size(elf.Prog32{})
	default:
		return nil, fmt.Errorf("%w: class %v", ErrMalformed, d.Class)
	}
	if d.Type != elf.ET_EXEC && d.Type != elf.ET_DYN {
		return nil, nil
	}
	if phnum == 0xffff { // PN_XNUM: the count is in section header 0
		return nil, fmt.Errorf("%w: too many program headers", ErrMalformed)
	}
	if phnum > 0 && int(phentsize) < progSize {
		return nil, fmt.Errorf("%w: program header size %d", ErrMalformed, phentsize)
	}
	// Check them all at once, so that a short head reports the length that
	// holds them all.
	if _, err := p.bytes(phoff, uint64(phnum)*uint64(phentsize), "program headers"); err != nil {
		return nil, err
	}
	var progs []elfProg
	for i := range uint64(phnum) {
		off := phoff + i*uint64(phentsize)
		var g elfProg
		if d.Class == elf.ELFCLASS64 {
			var ph elf.Prog64
			if err := p.decode(off, &ph, "program header"); err != nil {
				return nil, err
			}
			g = elfProg{elf.ProgType(ph.Type), ph.Off, ph.Vaddr, ph.Filesz}
		} else {
			var ph elf.Prog32
			if err := p.decode(off, &ph, "program header"); err != nil {
				return nil, err
			}
			g = elfProg{elf.ProgType(ph.Type), uint64(ph.Off), uint64(ph.Vaddr), uint64(ph.Filesz)}
		}
		switch g.typ {
		case elf.PT_LOAD, elf.PT_INTERP, elf.PT_DYNAMIC:
			progs = append(progs, g)
		}
	}
	return progs, nil
}

// interp reads the interpreter path as the kernel does: a NUL-terminated
// string filling the segment.
func (p *parser) interp(g elfProg) (string, error) {
	if g.filesz == 0 || g.filesz > maxELFName+1 {
		return "", fmt.Errorf("%w: interpreter size %d", ErrMalformed, g.filesz)
	}
	b, err := p.bytes(g.off, g.filesz, "interpreter")
	if err != nil {
		return "", err
	}
	if b[len(b)-1] != 0 {
		return "", fmt.Errorf("%w: interpreter not NUL-terminated", ErrMalformed)
	}
	s, _, _ := bytes.Cut(b, []byte{0})
	if len(s) == 0 {
		return "", fmt.Errorf("%w: empty interpreter", ErrMalformed)
	}
	return string(s), nil
}

// dynamic reads the dynamic segment dyn up to its DT_NULL, then the names
// it refers to in the string table.
func (p *parser) dynamic(dyn elfProg, progs []elfProg) error {
	var (
		needed                    []uint64
		strtab, strsz, run, rpath uint64
		hasStrtab, hasStrsz       bool
		hasRunPath, hasRPath      bool
	)
	size := uint64(binary.Size(elf.Dyn32{}))
	if p.deps.Class == elf.ELFCLASS64 {
		size = uint64(binary.Size(elf.Dyn64{}))
	}
	// Entries past the end of head are an error only if no DT_NULL comes
	// before them: the loader reads no further.
	for off := dyn.off; off-dyn.off+size <= dyn.filesz; off += size {
		var (
			tag elf.DynTag
			val uint64
		)
		if p.deps.Class == elf.ELFCLASS64 {
			var e elf.Dyn64
			if err := p.decode(off, &e, "dynamic segment"); err != nil {
				return dynShort(err, dyn)
			}
			tag, val = elf.DynTag(e.Tag), e.Val
		} else {
			var e elf.Dyn32
			if err := p.decode(off, &e, "dynamic segment"); err != nil {
				return dynShort(err, dyn)
			}
			tag, val = elf.DynTag(e.Tag), uint64(e.Val)
		}
		if tag == elf.DT_NULL {
			break
		}
		// Where a tag repeats, the loader keeps the last.
		switch tag {
		case elf.DT_NEEDED:
			if len(needed) < maxELFNeeded {
				needed = append(needed, val)
			}
		case elf.DT_STRTAB:
			strtab, hasStrtab = val, true
		case elf.DT_STRSZ:
			strsz, hasStrsz = val, true
		case elf.DT_RUNPATH:
			run, hasRunPath = val, true
		case elf.DT_RPATH:
			rpath, hasRPath = val, true
		}
	}
	if len(needed) == 0 && !hasRunPath && !hasRPath {
		return nil
	}
	if !hasStrtab {
		return fmt.Errorf("%w: no DT_STRTAB", ErrMalformed)
	}
	st, err := p.strtab(strtab, progs)
	if err != nil {
		return err
	}
	if hasStrsz && strsz < st.size {
		st.size = strsz
	}
	names := make([]string, 0, len(needed))
	for _, off := range needed {
		s, err := p.str(st, off, maxELFName, "DT_NEEDED name")
		if err != nil {
			return err
		}
		if s == "" {
			return fmt.Errorf("%w: empty DT_NEEDED name", ErrMalformed)
		}
		names = append(names, s)
	}
	if !hasRunPath && hasRPath {
		run, hasRunPath = rpath, true
	}
	var runPath []string
	if hasRunPath {
		s, err := p.str(st, run, maxELFRunPathLen, "run path")
		if err != nil {
			return err
		}
		runPath = strings.SplitN(s, ":", maxELFRunPath+1)
		runPath = runPath[:min(len(runPath), maxELFRunPath)]
	}
	p.deps.Needed, p.deps.RunPath = names, runPath
	return nil
}

// dynShort makes a short head error while reading the dynamic segment dyn
// ask for all of it rather than for one more entry.
func dynShort(err error, dyn elfProg) error {
	var short *ShortError
	if errors.As(err, &short) && dyn.off+dyn.filesz > short.Need {
		short.Need = dyn.off + dyn.filesz
	}
	return err
}

// elfStrtab is the string table in the file: at off, size bytes long.
type elfStrtab struct{ off, size uint64 }

// strtab finds the string table at address vaddr in the loadable segment
// that maps it from the file.
func (p *parser) strtab(vaddr uint64, progs []elfProg) (elfStrtab, error) {
	for _, g := range progs {
		if g.typ == elf.PT_LOAD && vaddr >= g.vaddr && vaddr-g.vaddr < g.filesz {
			rel := vaddr - g.vaddr
			if g.off+g.filesz < g.off {
				break
			}
			return elfStrtab{off: g.off + rel, size: g.filesz - rel}, nil
		}
	}
	return elfStrtab{}, fmt.Errorf("%w: DT_STRTAB %#x not in a loaded segment", ErrMalformed, vaddr)
}

// str reads the NUL-terminated string at off in st, of at most max bytes.
func (p *parser) str(st elfStrtab, off uint64, max int, what string) (string, error) {
	if off >= st.size {
		return "", fmt.Errorf("%w: %s at %#x beyond the string table", ErrMalformed, what, off)
	}
	start := st.off + off
	n := min(st.size-off, uint64(max)+1) // the string and its NUL
	if start < st.off || start+n < start {
		return "", fmt.Errorf("%w: %s at %#x overflows", ErrMalformed, what, off)
	}
	b, err := p.fill(start, n, what)
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return string(b[:i]), nil
	}
	switch {
	case err != nil:
		return "", err
	case n == st.size-off:
		return "", fmt.Errorf("%w: %s at %#x runs off the string table", ErrMalformed, what, off)
	}
	return "", fmt.Errorf("%w: %s at %#x longer than %d bytes", ErrMalformed, what, off, max)
}
