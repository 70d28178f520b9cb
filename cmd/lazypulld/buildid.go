package main

import (
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"io"
	"os"
)

// buildID identifies the binary of this process: the Go build ID that the
// linker writes into its ELF note (a hash of the build's inputs and
// output, so two builds differ in it whenever their code or flags differ),
// or else a hash of the file.
func buildID() (string, error) {
	// The running binary, even when its file was replaced since (an
	// upgrade installs the new binary over the old one).
	const exe = "/proc/self/exe"
	if id, err := goBuildID(exe); err == nil {
		return id, nil
	}
	f, err := os.Open(exe)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// goBuildID reads the Go build ID note of the ELF file at path.
func goBuildID(path string) (string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	s := f.Section(".note.go.buildid")
	if s == nil {
		return "", fmt.Errorf("%s has no Go build ID", path)
	}
	note, err := s.Data()
	if err != nil {
		return "", err
	}
	// namesz, descsz, type, then the name "Go\0\0" and the ID.
	if len(note) < 16 {
		return "", fmt.Errorf("%s: short Go build ID note", path)
	}
	nameSize := f.ByteOrder.Uint32(note[0:4])
	descSize := f.ByteOrder.Uint32(note[4:8])
	start := 12 + (nameSize+3)&^3
	if uint64(start)+uint64(descSize) > uint64(len(note)) {
		return "", fmt.Errorf("%s: malformed Go build ID note", path)
	}
	return string(note[start : start+descSize]), nil
}
