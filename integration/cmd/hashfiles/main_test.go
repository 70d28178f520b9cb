package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("abc"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := run([]string{p, p + ".missing"}, &out, &errOut); code != 1 {
		t.Errorf("exit code %d with a missing file, want 1", code)
	}
	want := "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  " + p + "\n"
	if out.String() != want {
		t.Errorf("stdout %q, want %q", out.String(), want)
	}
	if errOut.Len() == 0 {
		t.Error("no error printed for the missing file")
	}
}

func TestServe(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("abc"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if code := serve(strings.NewReader(p+"\n"+p+".missing\n"), &out); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	if len(lines) != 2 || lines[0] != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  "+p ||
		!strings.HasPrefix(lines[1], "error  "+p+".missing: ") {
		t.Errorf("stdout %q", out.String())
	}
}
