package fs

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
)

// What a program's start opens is worth knowing before the loader asks for
// it: the loader reads the interpreter, then each library, then their
// libraries, one round trip to the registry after another. The first bytes
// of an ELF file, the chunk a lazy read fetched anyway, usually name all of
// the next step, so that it can be fetched in parallel.

// Bounds on what parseELFDeps reads from a file that may be malformed or
// hostile.
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
)

// elfDeps is what the dynamic loader opens for an ELF file.
type elfDeps struct {
	// Interp is the PT_INTERP path, such as /lib64/ld-linux-x86-64.so.2;
	// "" for a static program or a library.
	Interp string
	// Needed are the DT_NEEDED names in order, at most maxELFNeeded. A
	// name with a slash is a path (relative ones to the working directory
	// of the process); one without is searched in libSearchDirs.
	Needed []string
	// RunPath is DT_RUNPATH, or DT_RPATH when there is no DT_RUNPATH,
	// split on ':', with $ORIGIN and the like unexpanded; at most
	// maxELFRunPath entries.
	RunPath []string
	// Machine, Class, Data and Flags (e_flags) are those of the file. The
	// loader skips a library whose first four do not match the program's
	// (Flags only matter on ARM, where they tell hard from soft float).
	Machine elf.Machine
	Class   elf.Class
	Data    elf.Data
	Flags   uint32
}

// elfShortError reports that head ends before something parseELFDeps needs.
// Programs of more than a few MiB often keep their dynamic segment that far
// into the file, behind the code.
type elfShortError struct {
	what string
	// Need is the head length that would hold what is missing.
	Need uint64
	have int
}

func (e *elfShortError) Error() string {
	return fmt.Sprintf("elf: %s ends at byte %d, beyond the %d bytes read", e.what, e.Need, e.have)
}

// errELFMalformed is wrapped by the errors of parseELFDeps about files that
// no amount of further bytes would make loadable.
var errELFMalformed = errors.New("malformed elf")

// parseELFDeps parses head, the first bytes of an ELF file (maybe the whole
// file), for what the dynamic loader will open. It reads only the ELF
// header, the program headers, the PT_INTERP and PT_DYNAMIC segments and the
// dynamic string table located through the PT_LOAD segments, never the
// section headers, which lie at the end of the file.
//
// It returns ok=false and no error when head is not an ELF file. When head
// is ELF but ends before what is needed the error is an *elfShortError; when
// the file is malformed it wraps errELFMalformed. With an error the fields
// read before it (Machine, Class, Data, Flags, and possibly Interp) are
// set; Needed and RunPath are only ever set in full, with a nil error.
// Relocatable and core files have no dependencies: they parse with ok=true
// and nothing to open.
func parseELFDeps(head []byte) (elfDeps, bool, error) {
	if len(head) < len(elf.ELFMAG) || string(head[:len(elf.ELFMAG)]) != elf.ELFMAG {
		return elfDeps{}, false, nil
	}
	p := elfParser{head: head}
	err := p.parse()
	return p.deps, true, err
}

// elfProg is a program header of either class.
type elfProg struct {
	typ                elf.ProgType
	off, vaddr, filesz uint64
}

type elfParser struct {
	head []byte
	// at and size, when at is set, are the whole file, read from in
	// blocks instead of head.
	at     io.ReaderAt
	size   uint64
	blkOff uint64 // where head starts in the file, with at
	bo     binary.ByteOrder
	deps   elfDeps
}

// Reads of parseELFDepsAt.
const (
	// elfBlock is the size of its reads: a header and its program
	// headers, or a dynamic segment, in one.
	elfBlock = 64 << 10
	// maxELFRead is the largest single read, of a string table.
	maxELFRead = 4 << 20
)

// parseELFDepsAt is parseELFDeps on the file of size bytes that r reads,
// of which it reads only the parts it parses: for a large program, far
// less than the head that would hold them.
func parseELFDepsAt(r io.ReaderAt, size int64) (elfDeps, bool, error) {
	var magic [len(elf.ELFMAG)]byte
	if _, err := r.ReadAt(magic[:], 0); err != nil || string(magic[:]) != elf.ELFMAG {
		if err != nil && !errors.Is(err, io.EOF) {
			return elfDeps{}, false, err
		}
		return elfDeps{}, false, nil
	}
	p := elfParser{at: r, size: uint64(max(size, 0))}
	err := p.parse()
	return p.deps, true, err
}

// read returns the file's bytes [off, off+n) through at, from the block
// read last when it holds them.
func (p *elfParser) read(off, n uint64, what string) ([]byte, error) {
	end := off + n
	if end < off || end > p.size {
		return nil, fmt.Errorf("%w: %s at %#x, size %#x, beyond the file's %d bytes", errELFMalformed, what, off, n, p.size)
	}
	if off >= p.blkOff && end <= p.blkOff+uint64(len(p.head)) {
		return p.head[off-p.blkOff : end-p.blkOff], nil
	}
	if n > maxELFRead {
		return nil, fmt.Errorf("%w: %s of %d bytes", errELFMalformed, what, n)
	}
	blk := min(max(n, elfBlock), p.size-off)
	buf := make([]byte, blk)
	if _, err := p.at.ReadAt(buf, int64(off)); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("elf: read %s: %w", what, err)
	}
	p.head, p.blkOff = buf, off
	return buf[:n], nil
}

// bytes returns head[off:off+n], or the error saying why there is no such
// slice.
func (p *elfParser) bytes(off, n uint64, what string) ([]byte, error) {
	if p.at != nil {
		return p.read(off, n, what)
	}
	end := off + n
	if end < off {
		return nil, fmt.Errorf("%w: %s at %#x, size %#x, overflows", errELFMalformed, what, off, n)
	}
	if end > uint64(len(p.head)) {
		return nil, &elfShortError{what: what, Need: end, have: len(p.head)}
	}
	return p.head[off:end], nil
}

// decode fills v, an elf.Header32/64, elf.Prog32/64 or elf.Dyn32/64, from
// head at off.
func (p *elfParser) decode(off uint64, v any, what string) error {
	b, err := p.bytes(off, uint64(binary.Size(v)), what)
	if err != nil {
		return err
	}
	_, err = binary.Decode(b, p.bo, v)
	return err
}

func (p *elfParser) parse() error {
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
		return fmt.Errorf("%w: data encoding %v", errELFMalformed, d.Data)
	}
	if v := elf.Version(ident[elf.EI_VERSION]); v != elf.EV_CURRENT {
		return fmt.Errorf("%w: version %v", errELFMalformed, v)
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
func (p *elfParser) progs() ([]elfProg, error) {
	d := &p.deps
	var (
		typ              elf.Type
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
		typ, d.Machine, d.Flags = elf.Type(h64.Type), elf.Machine(h64.Machine), h64.Flags
		phoff, phentsize, phnum = h64.Phoff, h64.Phentsize, h64.Phnum
		progSize = binary.Size(elf.Prog64{})
	case elf.ELFCLASS32:
		if err := p.decode(0, &h32, "ELF header"); err != nil {
			return nil, err
		}
		typ, d.Machine, d.Flags = elf.Type(h32.Type), elf.Machine(h32.Machine), h32.Flags
		phoff, phentsize, phnum = uint64(h32.Phoff), h32.Phentsize, h32.Phnum
		progSize = binary.Size(elf.Prog32{})
	default:
		return nil, fmt.Errorf("%w: class %v", errELFMalformed, d.Class)
	}
	if typ != elf.ET_EXEC && typ != elf.ET_DYN {
		return nil, nil
	}
	if phnum == 0xffff { // PN_XNUM: the count is in section header 0
		return nil, fmt.Errorf("%w: too many program headers", errELFMalformed)
	}
	if phnum > 0 && int(phentsize) < progSize {
		return nil, fmt.Errorf("%w: program header size %d", errELFMalformed, phentsize)
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
func (p *elfParser) interp(g elfProg) (string, error) {
	if g.filesz == 0 || g.filesz > maxELFName+1 {
		return "", fmt.Errorf("%w: interpreter size %d", errELFMalformed, g.filesz)
	}
	b, err := p.bytes(g.off, g.filesz, "interpreter")
	if err != nil {
		return "", err
	}
	if b[len(b)-1] != 0 {
		return "", fmt.Errorf("%w: interpreter not NUL-terminated", errELFMalformed)
	}
	s, _, _ := bytes.Cut(b, []byte{0})
	if len(s) == 0 {
		return "", fmt.Errorf("%w: empty interpreter", errELFMalformed)
	}
	return string(s), nil
}

// dynamic reads the dynamic segment dyn up to its DT_NULL, then the names
// it refers to in the string table.
func (p *elfParser) dynamic(dyn elfProg, progs []elfProg) error {
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
		return fmt.Errorf("%w: no DT_STRTAB", errELFMalformed)
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
			return fmt.Errorf("%w: empty DT_NEEDED name", errELFMalformed)
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
	var short *elfShortError
	if errors.As(err, &short) && dyn.off+dyn.filesz > short.Need {
		short.Need = dyn.off + dyn.filesz
	}
	return err
}

// elfStrtab is the string table in the file: at off, size bytes long.
type elfStrtab struct{ off, size uint64 }

// strtab finds the string table at address vaddr in the loadable segment
// that maps it from the file.
func (p *elfParser) strtab(vaddr uint64, progs []elfProg) (elfStrtab, error) {
	for _, g := range progs {
		if g.typ == elf.PT_LOAD && vaddr >= g.vaddr && vaddr-g.vaddr < g.filesz {
			rel := vaddr - g.vaddr
			if g.off+g.filesz < g.off {
				break
			}
			return elfStrtab{off: g.off + rel, size: g.filesz - rel}, nil
		}
	}
	return elfStrtab{}, fmt.Errorf("%w: DT_STRTAB %#x not in a loaded segment", errELFMalformed, vaddr)
}

// str reads the NUL-terminated string at off in st, of at most max bytes.
func (p *elfParser) str(st elfStrtab, off uint64, max int, what string) (string, error) {
	if off >= st.size {
		return "", fmt.Errorf("%w: %s at %#x beyond the string table", errELFMalformed, what, off)
	}
	start := st.off + off
	n := min(st.size-off, uint64(max)+1) // the string and its NUL
	if start < st.off || start+n < start {
		return "", fmt.Errorf("%w: %s at %#x overflows", errELFMalformed, what, off)
	}
	if p.at != nil {
		b, err := p.read(start, n, what)
		if err != nil {
			return "", err
		}
		if i := bytes.IndexByte(b, 0); i >= 0 {
			return string(b[:i]), nil
		}
	} else if start < uint64(len(p.head)) {
		b := p.head[start:min(start+n, uint64(len(p.head)))]
		if i := bytes.IndexByte(b, 0); i >= 0 {
			return string(b[:i]), nil
		}
	}
	if p.at == nil && start+n > uint64(len(p.head)) {
		return "", &elfShortError{what: what, Need: start + n, have: len(p.head)}
	}
	if n == st.size-off {
		return "", fmt.Errorf("%w: %s at %#x runs off the string table", errELFMalformed, what, off)
	}
	return "", fmt.Errorf("%w: %s at %#x longer than %d bytes", errELFMalformed, what, off, max)
}

// elfArch is what the loader of one architecture searches by default.
type elfArch struct {
	// triplets are the Debian multiarch names, preferred first.
	triplets []string
	// biarch is the directory under / and /usr of distributions that
	// keep this ABI beside another (lib64 on Fedora), "" if none.
	biarch string
	// lib are the expansions of $LIB, the library directory under / and
	// /usr, on the distributions that use each, preferred first.
	lib []string
	// platform is $PLATFORM, the kernel's AT_PLATFORM; "" if it varies
	// with the processor.
	platform string
}

// elfArchOf returns the search directories of d's architecture: those of
// the distributions containers are built from (Debian, Ubuntu, Fedora,
// Alpine); the loader itself takes them from ld.so.cache and its build.
func elfArchOf(d elfDeps) elfArch {
	is64 := d.Class == elf.ELFCLASS64
	gnu64 := func(triplet, platform string) elfArch {
		return elfArch{
			triplets: []string{triplet},
			biarch:   "lib64",
			lib:      []string{"lib/" + triplet, "lib64"},
			platform: platform,
		}
	}
	switch {
	case d.Machine == elf.EM_X86_64 && is64:
		return gnu64("x86_64-linux-gnu", "x86_64")
	case d.Machine == elf.EM_X86_64: // x32
		return elfArch{
			triplets: []string{"x86_64-linux-gnux32"},
			biarch:   "libx32",
			lib:      []string{"lib/x86_64-linux-gnux32", "libx32"},
		}
	case d.Machine == elf.EM_386:
		return elfArch{
			triplets: []string{"i386-linux-gnu"},
			biarch:   "lib32", // Debian's libc6-i386 on amd64
			lib:      []string{"lib/i386-linux-gnu", "lib32", "lib"},
			platform: "i686",
		}
	case d.Machine == elf.EM_AARCH64 && is64:
		return gnu64("aarch64-linux-gnu", "aarch64")
	case d.Machine == elf.EM_ARM:
		const hardFloat = 0x400 // EF_ARM_ABI_FLOAT_HARD
		t := []string{"arm-linux-gnueabi", "arm-linux-gnueabihf"}
		if d.Flags&hardFloat != 0 {
			t[0], t[1] = t[1], t[0]
		}
		return elfArch{triplets: t, lib: []string{"lib/" + t[0], "lib/" + t[1], "lib"}}
	case d.Machine == elf.EM_PPC64 && is64 && d.Data == elf.ELFDATA2LSB:
		return gnu64("powerpc64le-linux-gnu", "")
	case d.Machine == elf.EM_S390 && is64:
		return gnu64("s390x-linux-gnu", "")
	case d.Machine == elf.EM_RISCV && is64:
		a := gnu64("riscv64-linux-gnu", "")
		a.biarch, a.lib[1] = "lib64/lp64d", "lib64/lp64d"
		return a
	case is64:
		return elfArch{biarch: "lib64", lib: []string{"lib64"}}
	}
	return elfArch{lib: []string{"lib"}}
}

// libSearchDirs returns the directories, in order, where the loader looks
// for a DT_NEEDED name of d without a slash: d.RunPath first, then the
// default directories of d's architecture. objPath is the path the loader
// opened the object by, whose directory is $ORIGIN; for the main program
// that is the path with symlinks resolved (/proc/self/exe). $LIB expands to
// each library directory name of the architecture, $PLATFORM to the
// processor name where that is known; an entry naming an unknown $PLATFORM,
// and one that is not absolute after expansion (the loader would resolve it
// against the working directory), is skipped. Directories are not cleaned:
// one with ".." resolves, like the kernel does, through the symlinks of the
// tree it is looked up in.
//
// Not known here, and so not searched: LD_LIBRARY_PATH, the DT_RPATH of
// the objects that loaded this one (DT_RPATH, unlike DT_RUNPATH, is
// inherited), and ld.so.cache entries outside the usual directories.
func libSearchDirs(objPath string, d elfDeps) []string {
	arch := elfArchOf(d)
	var dirs []string
	seen := make(map[string]bool)
	add := func(dir string) {
		if len(dir) > 1 {
			dir = strings.TrimRight(dir, "/")
			if dir == "" {
				dir = "/"
			}
		}
		if path.IsAbs(dir) && !seen[dir] {
			seen[dir] = true
			dirs = append(dirs, dir)
		}
	}
	origin := path.Dir(objPath)
	for _, e := range d.RunPath {
		if e == "" {
			continue
		}
		for _, dir := range expandDST(e, origin, arch) {
			if len(dirs) < maxELFRunPath {
				add(dir)
			}
		}
	}
	if strings.HasPrefix(path.Base(d.Interp), "ld-musl-") {
		// musl's default path.
		for _, dir := range []string{"/lib", "/usr/local/lib", "/usr/lib"} {
			add(dir)
		}
		return dirs
	}
	// Debian's ld.so.conf puts /usr/local first, and the loader reads
	// ld.so.cache before its built-in directories.
	for _, t := range arch.triplets {
		add("/usr/local/lib/" + t)
	}
	add("/usr/local/lib")
	for _, t := range arch.triplets {
		add("/lib/" + t)
		add("/usr/lib/" + t)
	}
	if arch.biarch != "" {
		add("/" + arch.biarch)
		add("/usr/" + arch.biarch)
	}
	add("/lib")
	add("/usr/lib")
	return dirs
}

// expandDST expands the dynamic string tokens $ORIGIN, $LIB and $PLATFORM
// (or ${ORIGIN} and so on) in the run path entry e, as glibc does: a '$'
// followed by anything else stays as it is. It returns one directory per
// expansion of $LIB, none if $PLATFORM is unknown, and none longer than
// PATH_MAX, which the loader could not open either (and a run path of
// $ORIGIN repeated would otherwise expand to megabytes).
func expandDST(e, origin string, arch elfArch) []string {
	// Candidates grow in place, each in its own array, so that an entry
	// of many tokens costs time linear in its length.
	out := [][]byte{nil}
	appendAll := func(alts ...string) {
		next := out[:0]
		if len(alts) > 1 {
			next = nil
		}
		for _, o := range out {
			for _, a := range alts {
				if len(next) < maxDSTExpansions && len(o)+len(a) <= maxELFName {
					if len(alts) > 1 {
						o = slices.Clip(o)
					}
					next = append(next, append(o, a...))
				}
			}
		}
		out = next
	}
	for e != "" && len(out) > 0 {
		i := strings.IndexByte(e, '$')
		if i < 0 {
			appendAll(e)
			break
		}
		appendAll(e[:i])
		name, n := dstName(e[i+1:])
		switch name {
		case "ORIGIN":
			appendAll(origin)
		case "LIB":
			appendAll(arch.lib...)
		case "PLATFORM":
			if arch.platform == "" {
				return nil
			}
			appendAll(arch.platform)
		default:
			appendAll("$")
			n = 0
		}
		e = e[i+1+n:]
	}
	dirs := make([]string, len(out))
	for i, o := range out {
		dirs[i] = string(o)
	}
	return dirs
}

// dstName returns the token name at the start of s, the text after a '$',
// and the length of the token in s: "ORIGIN/x" gives ORIGIN, 6;
// "{LIB}/x" gives LIB, 5. An unterminated brace gives no name.
func dstName(s string) (string, int) {
	if strings.HasPrefix(s, "{") {
		end := strings.IndexByte(s, '}')
		if end < 0 {
			return "", 0
		}
		return s[1:end], end + 1
	}
	n := 0
	for n < len(s) && (s[n] == '_' || 'a' <= s[n] && s[n] <= 'z' ||
		'A' <= s[n] && s[n] <= 'Z' || '0' <= s[n] && s[n] <= '9') {
		n++
	}
	return s[:n], n
}
