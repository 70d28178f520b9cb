package main

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
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

func TestLoop(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("abc"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"req", "resp"} {
		if err := syscall.Mkfifo(filepath.Join(dir, n), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	req, err := os.OpenFile(filepath.Join(dir, "req"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := os.OpenFile(filepath.Join(dir, "resp"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Close()
	code := make(chan int, 1)
	var errOut bytes.Buffer
	go func() { code <- loop(dir, &errOut) }()
	r := bufio.NewReader(resp)
	want := []string{
		"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  " + p,
		"error open " + p + ".missing: no such file or directory",
		".",
	}
	for range 2 { // twice: the loop answers every request
		if _, err := req.WriteString(p + " " + p + ".missing\n"); err != nil {
			t.Fatal(err)
		}
		for _, w := range want {
			line, err := r.ReadString('\n')
			if err != nil || line != w+"\n" {
				t.Fatalf("answer line %q, %v; want %q", line, err, w)
			}
		}
	}
	req.Close()
	if c := <-code; c != 0 {
		t.Errorf("loop exited with %d: %s", c, errOut.String())
	}
}

func TestServe(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("abc"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if code := serve(strings.NewReader(p+"\n\n"+p+".missing\n"+p+"\n"), &out); code != 0 {
		t.Errorf("exit code %d", code)
	}
	sum := "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  " + p + "\n"
	lines := strings.SplitAfter(out.String(), "\n")
	if len(lines) != 4 || lines[0] != sum || !strings.HasPrefix(lines[1], "error "+p+".missing: ") || lines[2] != sum {
		t.Errorf("stdout %q", out.String())
	}
}
