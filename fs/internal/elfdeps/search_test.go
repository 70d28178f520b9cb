package elfdeps

import (
	"debug/elf"
	"slices"
	"testing"
)

// TestLibraries checks that a needed name resolves at the first search
// directory holding it, that a library of the program's own run path is
// private and one of the system's is not, and that names found nowhere
// and relative paths are left out.
func TestLibraries(t *testing.T) {
	d := Deps{
		Interp: "/lib64/ld-linux-x86-64.so.2", Machine: elf.EM_X86_64, Class: elf.ELFCLASS64, Data: elf.ELFDATA2LSB,
		Needed:  []string{"libapp.so", "libc.so.6", "libmissing.so", "/opt/abs.so", "rel/x.so"},
		RunPath: []string{"$ORIGIN/../lib", "/usr/lib"},
	}
	files := map[string]bool{
		"/opt/app/lib/libapp.so":             true,
		"/usr/lib/libc.so.6":                 true, // in the run path, but a system directory
		"/lib/x86_64-linux-gnu/libc.so.6":    true,
		"/usr/local/lib/libmissing.so.other": true,
	}
	got := Libraries("/opt/app/bin/app", d, func(p string) bool { return files[p] })
	want := []Library{
		{Path: "/opt/app/lib/libapp.so", Private: true},
		{Path: "/usr/lib/libc.so.6"},
		{Path: "/opt/abs.so"},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
}
