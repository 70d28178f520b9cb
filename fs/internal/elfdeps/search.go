package elfdeps

import (
	"debug/elf"
	"path"
	"slices"
	"strings"
)

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
func elfArchOf(d Deps) elfArch {
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

// SearchDirs returns the directories, in order, where the loader looks
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
func SearchDirs(objPath string, d Deps) []string {
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

// LdSoCache is the file the GNU loader reads first to find libraries.
const LdSoCache = "/etc/ld.so.cache"

// Library is a file the loader opens for an object.
type Library struct {
	Path string
	// Private is set for a library found in one of the object's run path
	// directories that is not a default one: a program's own library
	// directory, which tends to hold the plugins it loads with dlopen
	// next.
	Private bool
}

// Libraries returns the libraries the loader opens for the object at
// objPath whose dependencies are d, in the tree where exists tells which
// regular files there are: names with a slash as they are (when absolute),
// others at the first of SearchDirs that holds them. Names found nowhere
// are left out.
func Libraries(objPath string, d Deps, exists func(path string) bool) []Library {
	dirs := SearchDirs(objPath, d)
	system := SearchDirs(objPath, Deps{Interp: d.Interp, Machine: d.Machine, Class: d.Class, Data: d.Data, Flags: d.Flags})
	var libs []Library
	for _, name := range d.Needed {
		if strings.Contains(name, "/") {
			if path.IsAbs(name) {
				libs = append(libs, Library{Path: name})
			}
			continue
		}
		for _, dir := range dirs {
			if p := path.Join(dir, name); exists(p) {
				libs = append(libs, Library{Path: p, Private: !slices.Contains(system, dir)})
				break
			}
		}
	}
	return libs
}

// IsSharedObjectName reports whether a file name is that of a shared
// object: libfoo.so, libfoo.so.1.2, _foo.cpython-311-x86_64-linux-gnu.so.
func IsSharedObjectName(base string) bool {
	return strings.HasSuffix(base, ".so") || strings.Contains(base, ".so.")
}
