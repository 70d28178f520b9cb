package integration

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestRelease builds the release archives (make release) and checks what a
// node operator relies on: for amd64 and arm64, static binaries of the
// target architecture (no dynamic loader, no shared library) that report
// the release's version, the systemd unit and the example configuration,
// and checksums that match the archives.
func TestRelease(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	const version = "v0.0.0-releasetest"
	out := t.TempDir()
	cmd := exec.Command("../hack/release.sh", out)
	cmd.Env = append(os.Environ(), "VERSION="+version)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("release.sh: %v\n%s", err, b)
	}
	sums := readSums(t, filepath.Join(out, "SHA256SUMS"))
	for _, arch := range []struct {
		goarch  string
		machine elf.Machine
	}{{"amd64", elf.EM_X86_64}, {"arm64", elf.EM_AARCH64}} {
		name := "lazypull-" + version + "-linux-" + arch.goarch
		archive := filepath.Join(out, name+".tar.gz")
		if got, want := fileSHA256(t, archive), sums[name+".tar.gz"]; got != want {
			t.Errorf("%s: sha256 %s, SHA256SUMS says %q", name, got, want)
		}
		dir := t.TempDir()
		files := untar(t, archive, dir)
		for _, f := range []string{"bin/lazypulld", "bin/lazypull", "contrib/systemd/lazypulld.service", "config/example.toml", "LICENSE", "README.md"} {
			if !files[name+"/"+f] {
				t.Errorf("%s: no %s in the archive", name, f)
			}
		}
		for _, bin := range []string{"lazypulld", "lazypull"} {
			path := filepath.Join(dir, name, "bin", bin)
			checkStatic(t, path, arch.machine)
			if arch.goarch != runtime.GOARCH {
				continue
			}
			b, err := exec.Command(path, "--version").CombinedOutput()
			if err != nil || !strings.Contains(string(b), version) {
				t.Errorf("%s --version: %q (%v), want it to name %s", bin, b, err, version)
			}
		}
	}
}

// checkStatic fails t unless path is an ELF executable for machine that
// needs no dynamic loader and no shared library.
func checkStatic(t *testing.T, path string, machine elf.Machine) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()
	if f.Machine != machine {
		t.Errorf("%s: machine %v, want %v", path, f.Machine, machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s: has a program interpreter: not static", path)
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("%s: needs shared libraries %v (%v)", path, libs, err)
	}
}

func readSums(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sums := map[string]string{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		if sum, name, ok := strings.Cut(s.Text(), "  "); ok {
			sums[name] = sum
		}
	}
	return sums
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// untar extracts the regular files of a .tar.gz into dir and returns
// their names.
func untar(t *testing.T, archive, dir string) map[string]bool {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag != tar.TypeReg || strings.Contains(h.Name, "..") {
			continue
		}
		names[h.Name] = true
		path := filepath.Join(dir, h.Name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		w, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, os.FileMode(h.Mode)&0o755)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(w, tr); err != nil {
			t.Fatal(err)
		}
		w.Close()
	}
}

// TestInstall stages make install into a directory: binaries, unit and
// configuration land where the README says, and an installed configuration
// that the operator edited is kept by the next install.
func TestInstall(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	dest := t.TempDir()
	install := func() {
		t.Helper()
		cmd := exec.Command("make", "-C", "..", "install", "DESTDIR="+dest, "BIN="+t.TempDir())
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("make install: %v\n%s", err, b)
		}
	}
	install()
	for path, mode := range map[string]os.FileMode{
		"usr/local/bin/lazypulld":              0o755,
		"usr/local/bin/lazypull":               0o755,
		"etc/systemd/system/lazypulld.service": 0o644,
		"etc/lazypull/config.toml":             0o644,
	} {
		fi, err := os.Stat(filepath.Join(dest, path))
		if err != nil {
			t.Error(err)
			continue
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode().Perm(), mode)
		}
	}
	cfg := filepath.Join(dest, "etc/lazypull/config.toml")
	const edited = "log_level = \"debug\"\n"
	if err := os.WriteFile(cfg, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	install()
	if b, err := os.ReadFile(cfg); err != nil || string(b) != edited {
		t.Errorf("config after a second install: %q (%v), want the edited one kept", b, err)
	}
}
