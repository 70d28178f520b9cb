package fs

import (
	"path"
	"strings"
	"testing"
)

// cleanName must clean every name as estargz does.
func TestCleanName(t *testing.T) {
	for _, name := range []string{
		"", ".", "..", "/", "//", "./", "../", "a", "a/", "a//", "/a", "./a", "../a", "a/.", "a/..", "a/./b", "a/../b",
		"a//b", "a/b/", ".a", "..a", "a.", "a..", "a/.b", "a/..b/", "a/b/../../..", "///a///b///", ".../a",
	} {
		want := strings.TrimPrefix(path.Clean("/"+name), "/")
		if got := cleanName(name); got != want {
			t.Errorf("cleanName(%q) = %q, want %q", name, got, want)
		}
	}
}

func FuzzCleanName(f *testing.F) {
	f.Add("a/b/../c/")
	f.Fuzz(func(t *testing.T, name string) {
		if got, want := cleanName(name), strings.TrimPrefix(path.Clean("/"+name), "/"); got != want {
			t.Fatalf("cleanName(%q) = %q, want %q", name, got, want)
		}
	})
}
