package elfdeps

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"io"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// elfDepsOf returns what Go's debug/elf, which reads the section headers,
// says the loader opens for the ELF file in r.
func elfDepsOf(t testing.TB, f *elf.File) Deps {
	t.Helper()
	d := Deps{Type: f.Type, Machine: f.Machine, Class: f.Class, Data: f.Data}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				t.Fatal(err)
			}
			d.Interp, _, _ = strings.Cut(string(b), "\x00")
			break
		}
	}
	needed, err := f.ImportedLibraries()
	if err != nil {
		t.Fatal(err)
	}
	if len(needed) > 0 {
		d.Needed = needed
	}
	run, err := f.DynString(elf.DT_RUNPATH)
	if err != nil {
		t.Fatal(err)
	}
	if len(run) == 0 {
		if run, err = f.DynString(elf.DT_RPATH); err != nil {
			t.Fatal(err)
		}
	}
	if len(run) > 0 {
		d.RunPath = strings.Split(run[len(run)-1], ":")
	}
	return d
}

// elfFlags returns e_flags, which debug/elf does not.
func elfFlags(f *elf.File, b []byte) uint32 {
	if f.Class == elf.ELFCLASS64 {
		return f.ByteOrder.Uint32(b[48:])
	}
	return f.ByteOrder.Uint32(b[36:])
}

// realELFFiles returns dynamically linked programs and libraries of this
// machine, the test binary first.
func realELFFiles(t *testing.T) []string {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	files := []string{exe}
	for _, p := range []string{
		"/usr/bin/ls",
		"/usr/bin/true",
		"/usr/bin/busctl", // DT_RUNPATH
		"/usr/bin/java",   // DT_RPATH $ORIGIN
		"/lib/x86_64-linux-gnu/libc.so.6",
		"/lib/aarch64-linux-gnu/libc.so.6",
		"/lib64/ld-linux-x86-64.so.2",
		"/lib/ld-linux-aarch64.so.1",
	} {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			files = append(files, real)
		}
	}
	return files
}

// realELF returns the ELF file at p and what debug/elf finds in it.
func realELF(t *testing.T, p string) ([]byte, Deps) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Skip(err)
	}
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	want := elfDepsOf(t, f)
	want.Flags = elfFlags(f, b)
	return b, want
}

func TestParseELFDepsRealFiles(t *testing.T) {
	for _, p := range realELFFiles(t) {
		t.Run(strings.ReplaceAll(p, "/", "_"), func(t *testing.T) {
			b, want := realELF(t, p)
			got, ok, err := parseAll(b)
			if !ok || err != nil {
				t.Fatalf("Parse: ok=%v err=%v", ok, err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("Parse:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

// countingReaderAt counts the bytes read through it.
type countingReaderAt struct {
	r     io.ReaderAt
	bytes int64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.bytes += int64(n)
	return n, err
}

// TestParseELFDepsAt checks that parsing through a ReaderAt, as lazypull
// does on a file of a lazily pulled layer, finds what debug/elf finds while
// reading a small part of a large program: only the pieces the loader
// itself reads.
func TestParseELFDepsAt(t *testing.T) {
	for i, p := range realELFFiles(t) {
		t.Run(strings.ReplaceAll(p, "/", "_"), func(t *testing.T) {
			b, want := realELF(t, p)
			r := &countingReaderAt{r: bytes.NewReader(b)}
			got, ok, err := Parse(r, int64(len(b)))
			if !ok || err != nil {
				t.Fatalf("Parse: ok=%v err=%v", ok, err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("Parse:\n got %+v\nwant %+v", got, want)
			}
			t.Logf("read %d of %d bytes", r.bytes, len(b))
			if i == 0 && r.bytes > int64(len(b))/4 { // the test binary, megabytes
				t.Errorf("read %d bytes of %d to parse", r.bytes, len(b))
			}
		})
	}
	if _, ok, err := Parse(strings.NewReader("#!/bin/sh\n"), 10); ok || err != nil {
		t.Errorf("a script: ok=%v err=%v, want not ELF", ok, err)
	}
	// A dynamically linked program cut in the middle of its dynamic
	// segment (the test binary is linked statically without cgo).
	for _, p := range realELFFiles(t) {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		f, err := elf.NewFile(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		for _, prog := range f.Progs {
			if prog.Type != elf.PT_DYNAMIC || prog.Filesz < 2 {
				continue
			}
			cut := int64(prog.Off + prog.Filesz/2)
			if _, _, err := Parse(bytes.NewReader(b[:cut]), cut); !errors.Is(err, ErrMalformed) {
				t.Errorf("%s cut in its dynamic segment: %v, want a malformed file", p, err)
			}
			return
		}
	}
	t.Error("no dynamically linked program to cut")
}

// TestParseELFDepsHead checks what a lazy read fetches first, the first
// 4 MiB, gives for the programs of this machine: all the dependencies of a
// file that fits in it; at least a short head error and the interpreter of
// one that does not (the dynamic segment of a large program lies behind its
// code). It also reports the shortest head that is enough.
func TestParseELFDepsHead(t *testing.T) {
	for _, p := range realELFFiles(t) {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		want, _, err := parseAll(b)
		if err != nil {
			t.Fatal(err)
		}
		const chunk = 4 << 20
		got, ok, err := parseHead(b, min(len(b), chunk))
		var short *ShortError
		switch {
		case len(b) <= chunk && (!ok || err != nil || !reflect.DeepEqual(got, want)):
			t.Errorf("%s: got %+v, ok=%v, err=%v", p, got, ok, err)
		case len(b) > chunk && err == nil && !reflect.DeepEqual(got, want):
			t.Errorf("%s: first 4 MiB of %d: got %+v, want %+v", p, len(b), got, want)
		case len(b) > chunk && err != nil && (!errors.As(err, &short) || got.Interp != want.Interp):
			t.Errorf("%s: first 4 MiB of %d: got %+v, err=%v", p, len(b), got, err)
		}
		// Growing head to what each error asks for ends in the full
		// result within a few steps.
		n, steps := 4, 0
		for ; ; steps++ {
			got, _, err := parseHead(b, n)
			if err == nil {
				if !reflect.DeepEqual(got, want) {
					t.Errorf("%s: head of %d: got %+v, want %+v", p, n, got, want)
				}
				break
			}
			var short *ShortError
			if !errors.As(err, &short) || short.Need <= uint64(n) || short.Need > uint64(len(b)) || steps > 8 {
				t.Fatalf("%s: head of %d: %v (step %d)", p, n, err, steps)
			}
			n = int(short.Need)
		}
		t.Logf("%s: %d bytes: dependencies in the first %d, found in %d steps", p, len(b), n, steps)
	}
}

// TestParseELFDepsStatic checks static Go programs, built for architectures
// of both classes and byte orders: no interpreter, nothing needed.
func TestParseELFDepsStatic(t *testing.T) {
	if testing.Short() {
		t.Skip("builds programs")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte("package main\n\nfunc main() { println(\"hi\") }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		goarch  string
		machine elf.Machine
		class   elf.Class
		data    elf.Data
	}{
		{"amd64", elf.EM_X86_64, elf.ELFCLASS64, elf.ELFDATA2LSB},
		{"386", elf.EM_386, elf.ELFCLASS32, elf.ELFDATA2LSB},
		{"s390x", elf.EM_S390, elf.ELFCLASS64, elf.ELFDATA2MSB},
		{"mips", elf.EM_MIPS, elf.ELFCLASS32, elf.ELFDATA2MSB},
	} {
		t.Run(tc.goarch, func(t *testing.T) {
			out := filepath.Join(dir, tc.goarch)
			cmd := exec.Command("go", "build", "-o", out, src)
			cmd.Dir = dir
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+tc.goarch, "GOFLAGS=")
			if b, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("go build: %v\n%s", err, b)
			}
			b, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			got, ok, err := parseAll(b)
			want := Deps{Type: elf.ET_EXEC, Machine: tc.machine, Class: tc.class, Data: tc.data, Flags: got.Flags}
			if !ok || err != nil || !reflect.DeepEqual(got, want) {
				t.Fatalf("got %+v, ok=%v, err=%v; want %+v", got, ok, err, want)
			}
		})
	}
}

func TestParseELFDepsNotELF(t *testing.T) {
	for _, head := range []string{
		"",
		"\x7fEL",
		"#!/bin/sh\necho hi\n",
		"\x1f\x8b\x08\x00\x00\x00\x00\x00",
		"MZ\x90\x00",
		"\x7felf\x02\x01\x01",
	} {
		if d, ok, err := parseAll([]byte(head)); ok || err != nil || !reflect.DeepEqual(d, Deps{}) {
			t.Errorf("%q: got %+v, ok=%v, err=%v; want not ELF", head, d, ok, err)
		}
	}
	if b, err := os.ReadFile("/etc/passwd"); err == nil {
		if _, ok, err := parseAll(b); ok || err != nil {
			t.Errorf("/etc/passwd: ok=%v, err=%v", ok, err)
		}
	}
}

// synthELF describes a small dynamically linked ELF file that buildELF
// writes with both program and section headers, so that debug/elf can
// check what Parse makes of it.
type synthELF struct {
	class   elf.Class
	data    elf.Data
	machine elf.Machine
	flags   uint32
	interp  string
	needed  []string
	runPath string
	rpath   string
	base    uint64 // address of file offset 0
	strsz   uint64 // DT_STRSZ if not 0
}

func buildELF(s synthELF) []byte {
	is64 := s.class == elf.ELFCLASS64
	var bo binary.ByteOrder = binary.LittleEndian
	if s.data == elf.ELFDATA2MSB {
		bo = binary.BigEndian
	}
	ehsize, phsize, dynsize, shsize := 52, 32, 8, 40
	if is64 {
		ehsize, phsize, dynsize, shsize = 64, 56, 16, 64
	}
	align := func(n int) int { return (n + 7) &^ 7 }

	dynstr := []byte{0}
	str := func(v string) uint64 {
		off := len(dynstr)
		dynstr = append(append(dynstr, v...), 0)
		return uint64(off)
	}
	type dyn struct {
		tag elf.DynTag
		val uint64
	}
	var dyns []dyn
	for _, n := range s.needed {
		dyns = append(dyns, dyn{elf.DT_NEEDED, str(n)})
	}
	if s.rpath != "" {
		dyns = append(dyns, dyn{elf.DT_RPATH, str(s.rpath)})
	}
	if s.runPath != "" {
		dyns = append(dyns, dyn{elf.DT_RUNPATH, str(s.runPath)})
	}
	nprog := 2
	var interp []byte
	if s.interp != "" {
		nprog, interp = 3, append([]byte(s.interp), 0)
	}
	interpOff := ehsize + nprog*phsize
	dynstrOff := interpOff + len(interp)
	dynOff := align(dynstrOff + len(dynstr))
	strsz := uint64(len(dynstr))
	if s.strsz != 0 {
		strsz = s.strsz
	}
	dyns = append(dyns, dyn{elf.DT_STRTAB, s.base + uint64(dynstrOff)}, dyn{elf.DT_STRSZ, strsz}, dyn{elf.DT_NULL, 0})
	shstr := "\x00.interp\x00.dynstr\x00.dynamic\x00.shstrtab\x00"
	shstrOff := dynOff + len(dyns)*dynsize
	shOff := align(shstrOff + len(shstr))
	size := shOff + 5*shsize

	var b bytes.Buffer
	w := func(v any) {
		if err := binary.Write(&b, bo, v); err != nil {
			panic(err)
		}
	}
	var ident [elf.EI_NIDENT]byte
	copy(ident[:], elf.ELFMAG)
	ident[elf.EI_CLASS], ident[elf.EI_DATA], ident[elf.EI_VERSION] = byte(s.class), byte(s.data), byte(elf.EV_CURRENT)
	type prog struct {
		typ              elf.ProgType
		off, vaddr, size uint64
	}
	var progs []prog
	if interp != nil {
		progs = append(progs, prog{elf.PT_INTERP, uint64(interpOff), s.base + uint64(interpOff), uint64(len(interp))})
	}
	progs = append(progs,
		prog{elf.PT_LOAD, 0, s.base, uint64(size)},
		prog{elf.PT_DYNAMIC, uint64(dynOff), s.base + uint64(dynOff), uint64(len(dyns) * dynsize)})
	type section struct {
		name, typ, link uint32
		off, size, ent  uint64
	}
	sections := []section{
		{},
		{1, uint32(elf.SHT_PROGBITS), 0, uint64(interpOff), uint64(len(interp)), 0},
		{9, uint32(elf.SHT_STRTAB), 0, uint64(dynstrOff), uint64(len(dynstr)), 0},
		{17, uint32(elf.SHT_DYNAMIC), 2, uint64(dynOff), uint64(len(dyns) * dynsize), uint64(dynsize)},
		{26, uint32(elf.SHT_STRTAB), 0, uint64(shstrOff), uint64(len(shstr)), 0},
	}
	if is64 {
		w(elf.Header64{Ident: ident, Type: uint16(elf.ET_DYN), Machine: uint16(s.machine), Version: 1,
			Phoff: uint64(ehsize), Shoff: uint64(shOff), Flags: s.flags, Ehsize: uint16(ehsize),
			Phentsize: uint16(phsize), Phnum: uint16(nprog), Shentsize: uint16(shsize), Shnum: 5, Shstrndx: 4})
		for _, p := range progs {
			w(elf.Prog64{Type: uint32(p.typ), Flags: uint32(elf.PF_R), Off: p.off, Vaddr: p.vaddr, Paddr: p.vaddr,
				Filesz: p.size, Memsz: p.size, Align: 8})
		}
	} else {
		w(elf.Header32{Ident: ident, Type: uint16(elf.ET_DYN), Machine: uint16(s.machine), Version: 1,
			Phoff: uint32(ehsize), Shoff: uint32(shOff), Flags: s.flags, Ehsize: uint16(ehsize),
			Phentsize: uint16(phsize), Phnum: uint16(nprog), Shentsize: uint16(shsize), Shnum: 5, Shstrndx: 4})
		for _, p := range progs {
			w(elf.Prog32{Type: uint32(p.typ), Flags: uint32(elf.PF_R), Off: uint32(p.off), Vaddr: uint32(p.vaddr),
				Paddr: uint32(p.vaddr), Filesz: uint32(p.size), Memsz: uint32(p.size), Align: 8})
		}
	}
	b.Write(interp)
	b.Write(dynstr)
	b.Write(make([]byte, dynOff-b.Len()))
	for _, d := range dyns {
		if is64 {
			w(elf.Dyn64{Tag: int64(d.tag), Val: d.val})
		} else {
			w(elf.Dyn32{Tag: int32(d.tag), Val: uint32(d.val)})
		}
	}
	b.WriteString(shstr)
	b.Write(make([]byte, shOff-b.Len()))
	for _, sh := range sections {
		if is64 {
			w(elf.Section64{Name: sh.name, Type: sh.typ, Addr: s.base + sh.off, Off: sh.off, Size: sh.size,
				Link: sh.link, Addralign: 1, Entsize: sh.ent})
		} else {
			w(elf.Section32{Name: sh.name, Type: sh.typ, Addr: uint32(s.base + sh.off), Off: uint32(sh.off),
				Size: uint32(sh.size), Link: sh.link, Addralign: 1, Entsize: uint32(sh.ent)})
		}
	}
	return b.Bytes()
}

// synthELFs are files of each class and byte order, with run paths of
// either kind.
var synthELFs = map[string]synthELF{
	"64LE": {class: elf.ELFCLASS64, data: elf.ELFDATA2LSB, machine: elf.EM_X86_64,
		interp: "/lib64/ld-linux-x86-64.so.2", needed: []string{"libfoo.so.1", "/opt/x/libbar.so", "libc.so.6"},
		runPath: "$ORIGIN/../lib:/opt/lib", base: 0x400000},
	"32LE": {class: elf.ELFCLASS32, data: elf.ELFDATA2LSB, machine: elf.EM_386,
		interp: "/lib/ld-linux.so.2", needed: []string{"libm.so.6", "libc.so.6"}, rpath: "/opt/lib32", base: 0x8048000},
	"64BE": {class: elf.ELFCLASS64, data: elf.ELFDATA2MSB, machine: elf.EM_S390,
		interp: "/lib/ld64.so.1", needed: []string{"libc.so.6"}, runPath: "/a:/b", rpath: "/ignored"},
	"32BE": {class: elf.ELFCLASS32, data: elf.ELFDATA2MSB, machine: elf.EM_MIPS,
		needed: []string{"libz.so.1", "libc.so.6"}, base: 0x10000},
	"ARMHF": {class: elf.ELFCLASS32, data: elf.ELFDATA2LSB, machine: elf.EM_ARM, flags: 0x5000400,
		interp: "/lib/ld-linux-armhf.so.3", needed: []string{"libc.so.6"}, runPath: "${ORIGIN}"},
	"NoNeeded": {class: elf.ELFCLASS64, data: elf.ELFDATA2LSB, machine: elf.EM_AARCH64,
		interp: "/lib/ld-linux-aarch64.so.1"},
}

func TestParseELFDepsSynthetic(t *testing.T) {
	for name, s := range synthELFs {
		t.Run(name, func(t *testing.T) {
			b := buildELF(s)
			f, err := elf.NewFile(bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			want := elfDepsOf(t, f)
			want.Flags = s.flags
			got, ok, err := parseAll(b)
			if !ok || err != nil || !reflect.DeepEqual(got, want) {
				t.Fatalf("got %+v, ok=%v, err=%v\nwant %+v", got, ok, err, want)
			}
			// And the hand-made expectation, should debug/elf drift.
			if got.Interp != s.interp || !slices.Equal(got.Needed, s.needed) || got.Machine != s.machine ||
				got.Class != s.class || got.Data != s.data {
				t.Fatalf("got %+v, built from %+v", got, s)
			}
			run := s.runPath
			if run == "" {
				run = s.rpath
			}
			if strings.Join(got.RunPath, ":") != run {
				t.Fatalf("run path %q, want %q", got.RunPath, run)
			}
		})
	}
}

func TestParseELFDepsNeededCap(t *testing.T) {
	s := synthELFs["64LE"]
	s.needed = nil
	for i := range maxELFNeeded + 44 {
		s.needed = append(s.needed, "lib"+strings.Repeat("x", i%7)+string(rune('a'+i%26))+".so")
	}
	got, ok, err := parseAll(buildELF(s))
	if !ok || err != nil || !slices.Equal(got.Needed, s.needed[:maxELFNeeded]) {
		t.Fatalf("got %d needed, ok=%v, err=%v; want the first %d", len(got.Needed), ok, err, maxELFNeeded)
	}
}

func TestParseELFDepsMalformed(t *testing.T) {
	put16 := func(off int, v uint16) func([]byte) {
		return func(b []byte) { binary.LittleEndian.PutUint16(b[off:], v) }
	}
	for _, tc := range []struct {
		name string
		s    synthELF
		edit func([]byte)
	}{
		{"data", synthELFs["64LE"], func(b []byte) { b[elf.EI_DATA] = 3 }},
		{"version", synthELFs["64LE"], func(b []byte) { b[elf.EI_VERSION] = 0 }},
		{"class", synthELFs["64LE"], func(b []byte) { b[elf.EI_CLASS] = 0 }},
		{"phentsize", synthELFs["64LE"], put16(54, 40)},
		{"phnum xnum", synthELFs["64LE"], put16(56, 0xffff)},
		{"phoff overflow", synthELFs["64LE"], func(b []byte) { binary.LittleEndian.PutUint64(b[32:], ^uint64(0)-8) }},
		{"strsz", func() synthELF { s := synthELFs["32LE"]; s.strsz = 2; return s }(), nil},
		{"interp unterminated", synthELFs["32LE"], func(b []byte) {
			i := bytes.Index(b, []byte("ld-linux.so.2\x00"))
			b[i+len("ld-linux.so.2")] = 'x'
		}},
		{"strtab unmapped", synthELFs["64LE"], func(b []byte) {
			f, err := elf.NewFile(bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			dyn := f.Section(".dynamic")
			for off := dyn.Offset; off < dyn.Offset+dyn.Size; off += 16 {
				if elf.DynTag(binary.LittleEndian.Uint64(b[off:])) == elf.DT_STRTAB {
					binary.LittleEndian.PutUint64(b[off+8:], 0x10)
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := buildELF(tc.s)
			if tc.edit != nil {
				tc.edit(b)
			}
			d, ok, err := parseAll(b)
			if !ok || !errors.Is(err, ErrMalformed) || d.Needed != nil {
				t.Fatalf("got %+v, ok=%v, err=%v; want malformed", d, ok, err)
			}
		})
	}
	// Files without dependencies to load parse with none.
	b := buildELF(synthELFs["64LE"])
	put16(16, uint16(elf.ET_REL))(b)
	if d, ok, err := parseAll(b); !ok || err != nil || d.Interp != "" || d.Needed != nil {
		t.Fatalf("relocatable: got %+v, ok=%v, err=%v", d, ok, err)
	}
}

// TestParseELFDepsTruncated cuts files at many points, around every
// boundary of what Parse reads among them: each head must give the
// full result or a short head error asking for more, never a wrong result
// or a panic (head is cut to its capacity, so that reading past it panics).
func TestParseELFDepsTruncated(t *testing.T) {
	files := map[string][]byte{}
	for name, s := range synthELFs {
		files[name] = buildELF(s)
	}
	for _, p := range realELFFiles(t) {
		if b, err := os.ReadFile(p); err == nil {
			files[p] = b
		}
	}
	for _, name := range slices.Sorted(maps.Keys(files)) {
		b := files[name]
		want, _, err := parseAll(b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		f, err := elf.NewFile(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		var marks []uint64
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
				marks = append(marks, p.Off, p.Off+p.Filesz)
			}
		}
		if s := f.Section(".dynstr"); s != nil {
			marks = append(marks, s.Offset, s.Offset+s.Size)
		}
		cuts := map[int]bool{}
		for n := range min(len(b), 2048) {
			cuts[n] = true
		}
		for n := 0; n < len(b); n += max(1, len(b)/1500) {
			cuts[n] = true
		}
		for _, m := range marks {
			for n := max(0, int(m)-300); n <= min(len(b), int(m)+300); n++ {
				cuts[n] = true
			}
		}
		for n := range cuts {
			got, ok, err := parseHead(b, n)
			if n < len(elf.ELFMAG) {
				if ok || err != nil {
					t.Fatalf("%s cut at %d: ok=%v err=%v", name, n, ok, err)
				}
				continue
			}
			if !ok {
				t.Fatalf("%s cut at %d: not ELF", name, n)
			}
			if err == nil {
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("%s cut at %d: got %+v, want %+v", name, n, got, want)
				}
				continue
			}
			var short *ShortError
			if !errors.As(err, &short) || short.Need <= uint64(n) || short.Need > uint64(len(b)) {
				t.Fatalf("%s cut at %d: %v", name, n, err)
			}
			if got.Needed != nil || got.RunPath != nil || got.Interp != "" && got.Interp != want.Interp {
				t.Fatalf("%s cut at %d: partial result %+v, want %+v", name, n, got, want)
			}
		}
		t.Logf("%s: %d cuts of %d bytes", name, len(cuts), len(b))
	}
}

func FuzzParseELFDeps(f *testing.F) {
	for _, s := range synthELFs {
		f.Add(buildELF(s))
	}
	for _, p := range []string{"/usr/bin/true", "/usr/bin/ls"} {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b[:min(len(b), 4096)])
			if len(b) <= 64<<10 {
				f.Add(b)
			}
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		d, ok, err := parseHead(b, len(b))
		if !ok && (err != nil || !reflect.DeepEqual(d, Deps{})) {
			t.Fatalf("not ELF, yet %+v, %v", d, err)
		}
		var short *ShortError
		if errors.As(err, &short) && short.Need <= uint64(len(b)) {
			t.Fatalf("short head of %d asks for %d", len(b), short.Need)
		}
		if len(d.Needed) > maxELFNeeded || len(d.RunPath) > maxELFRunPath || len(d.Interp) > maxELFName {
			t.Fatalf("beyond bounds: %d needed, %d run path, interp of %d", len(d.Needed), len(d.RunPath), len(d.Interp))
		}
		for _, dir := range SearchDirs("/usr/bin/prog", d) {
			if !path.IsAbs(dir) || len(dir) > maxELFName {
				t.Fatalf("search directory %q", dir)
			}
		}
		// A prefix of a file that parses gives the same or asks for more.
		if !ok || err != nil {
			return
		}
		for _, n := range []int{len(b) / 3, len(b) / 2, len(b) - 1} {
			got, _, err := parseHead(b, n)
			if err == nil && !reflect.DeepEqual(got, d) || err != nil && !errors.As(err, &short) {
				t.Fatalf("cut at %d of %d: got %+v, %v; want %+v", n, len(b), got, err, d)
			}
		}
	})
}

// TestLibSearchDirsBounded checks that a run path made to expand to
// megabytes expands to nothing the loader could open.
func TestLibSearchDirsBounded(t *testing.T) {
	origin := "/" + strings.Repeat("d/", 1999) + "d" // 4000 bytes
	d := Deps{Machine: elf.EM_X86_64, Class: elf.ELFCLASS64,
		RunPath: []string{strings.Repeat("$ORIGIN$LIB", maxELFRunPathLen/11), "/$LIB" + strings.Repeat("$", 60000), "/ok/$ORIGIN"}}
	dirs := SearchDirs(origin+"/prog", d)
	if len(dirs) == 0 || dirs[0] != "/ok/"+origin {
		t.Fatalf("got %.200q", dirs)
	}
	for _, dir := range dirs {
		if len(dir) > maxELFName {
			t.Fatalf("directory of %d bytes", len(dir))
		}
	}
}

func BenchmarkParseELFDeps(b *testing.B) {
	head, err := os.ReadFile("/usr/bin/ls")
	if err != nil {
		b.Skip(err)
	}
	for b.Loop() {
		if _, _, err := parseAll(head); err != nil {
			b.Fatal(err)
		}
	}
}

func TestLibSearchDirs(t *testing.T) {
	amd64 := Deps{Machine: elf.EM_X86_64, Class: elf.ELFCLASS64, Data: elf.ELFDATA2LSB}
	with := func(d Deps, f func(*Deps)) Deps { f(&d); return d }
	amd64Default := []string{
		"/usr/local/lib/x86_64-linux-gnu", "/usr/local/lib",
		"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib",
	}
	for _, tc := range []struct {
		name string
		obj  string
		d    Deps
		want []string
	}{
		{"amd64", "/usr/bin/ls", amd64, amd64Default},
		{"origin", "/opt/app/bin/app", with(amd64, func(d *Deps) {
			d.RunPath = []string{"$ORIGIN/../lib", "${ORIGIN}", "/opt/lib/", "", "rel/lib", "$ORIGIN/../lib", "/usr/lib"}
		}), []string{"/opt/app/bin/../lib", "/opt/app/bin", "/opt/lib", "/usr/lib", // deduplicated
			"/usr/local/lib/x86_64-linux-gnu", "/usr/local/lib",
			"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib"}},
		{"origin of relative path", "app", with(amd64, func(d *Deps) { d.RunPath = []string{"$ORIGIN/lib"} }), amd64Default},
		{"not tokens", "/a/b", with(amd64, func(d *Deps) {
			d.RunPath = []string{"$ORIGINAL/x", "${ORIGIN/y", "/z$", "$ORIGIN_X", "/p/${FOO}"}
		}), append([]string{"/z$", "/p/${FOO}"}, amd64Default...)},
		{"lib and platform", "/a/b", with(amd64, func(d *Deps) {
			d.RunPath = []string{"/opt/$LIB/$PLATFORM", "/x/${LIB}/y"}
		}), append([]string{"/opt/lib/x86_64-linux-gnu/x86_64", "/opt/lib64/x86_64",
			"/x/lib/x86_64-linux-gnu/y", "/x/lib64/y"}, amd64Default...)},
		{"arm64", "/bin/x", Deps{Machine: elf.EM_AARCH64, Class: elf.ELFCLASS64}, []string{
			"/usr/local/lib/aarch64-linux-gnu", "/usr/local/lib",
			"/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib",
		}},
		{"386", "/bin/x", Deps{Machine: elf.EM_386, Class: elf.ELFCLASS32}, []string{
			"/usr/local/lib/i386-linux-gnu", "/usr/local/lib",
			"/lib/i386-linux-gnu", "/usr/lib/i386-linux-gnu", "/lib32", "/usr/lib32", "/lib", "/usr/lib",
		}},
		{"armhf", "/bin/x", Deps{Machine: elf.EM_ARM, Class: elf.ELFCLASS32, Flags: 0x5000400}, []string{
			"/usr/local/lib/arm-linux-gnueabihf", "/usr/local/lib/arm-linux-gnueabi", "/usr/local/lib",
			"/lib/arm-linux-gnueabihf", "/usr/lib/arm-linux-gnueabihf",
			"/lib/arm-linux-gnueabi", "/usr/lib/arm-linux-gnueabi", "/lib", "/usr/lib",
		}},
		{"armel platform unknown", "/bin/x", Deps{Machine: elf.EM_ARM, Class: elf.ELFCLASS32, RunPath: []string{"/p/$PLATFORM"}}, []string{
			"/usr/local/lib/arm-linux-gnueabi", "/usr/local/lib/arm-linux-gnueabihf", "/usr/local/lib",
			"/lib/arm-linux-gnueabi", "/usr/lib/arm-linux-gnueabi",
			"/lib/arm-linux-gnueabihf", "/usr/lib/arm-linux-gnueabihf", "/lib", "/usr/lib",
		}},
		{"musl", "/bin/busybox", with(amd64, func(d *Deps) {
			d.Interp, d.RunPath = "/lib/ld-musl-x86_64.so.1", []string{"/opt/lib"}
		}), []string{"/opt/lib", "/lib", "/usr/local/lib", "/usr/lib"}},
		{"unknown 64-bit", "/bin/x", Deps{Machine: elf.EM_SPARCV9, Class: elf.ELFCLASS64}, []string{
			"/usr/local/lib", "/lib64", "/usr/lib64", "/lib", "/usr/lib",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := SearchDirs(tc.obj, tc.d); !slices.Equal(got, tc.want) {
				t.Fatalf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}

// TestLibSearchDirsLdd checks, for the programs of this machine, that the
// first of SearchDirs holding each needed library is where the loader
// finds it, as ldd reports.
func TestLibSearchDirsLdd(t *testing.T) {
	if _, err := exec.LookPath("ldd"); err != nil {
		t.Skip(err)
	}
	checked := 0
	for _, p := range realELFFiles(t) {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		d, _, err := parseAll(b)
		if err != nil {
			t.Fatal(err)
		}
		if d.Interp == "" {
			continue // ldd runs libraries too, but this is about programs
		}
		cmd := exec.Command("ldd", p)
		cmd.Env = []string{"PATH=/usr/bin:/bin"}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("ldd %s: %v", p, err)
		}
		found := map[string]string{}
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			name, rest, ok := strings.Cut(strings.TrimSpace(sc.Text()), " => ")
			if ok {
				found[name], _, _ = strings.Cut(rest, " (")
			}
		}
		dirs := SearchDirs(p, d)
		for _, name := range d.Needed {
			if _, ok := found[name]; !ok {
				continue // the loader itself, needed by libc
			}
			want, err := filepath.EvalSymlinks(found[name])
			if err != nil {
				t.Fatalf("%s: ldd finds %s at %q: %v", p, name, found[name], err)
			}
			var got string
			for _, dir := range dirs {
				if real, err := filepath.EvalSymlinks(filepath.Join(dir, name)); err == nil {
					got = real
					break
				}
			}
			if got != want {
				t.Errorf("%s: %s found at %q, the loader opens %q (searched %q)", p, name, got, want, dirs)
			}
			checked++
		}
	}
	if checked == 0 {
		t.Skip("no dynamically linked program")
	}
	t.Logf("%d libraries found where the loader finds them", checked)
}

// parseAll parses the whole file b.
func parseAll(b []byte) (Deps, bool, error) { return parseHead(b, len(b)) }

// parseHead parses file b from a reader holding its first n bytes only,
// as those of a lazily read file's first chunk.
func parseHead(b []byte, n int) (Deps, bool, error) {
	return Parse(bytes.NewReader(b[:n:n]), int64(len(b)))
}
