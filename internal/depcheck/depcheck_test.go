package depcheck

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/lazypull/lazypull/"

// wiring are the top-level directories whose packages may import any
// package of the project.
var wiring = map[string]bool{"cmd": true, "hack": true, "integration": true}

// component returns the top-level directory of package pkg of the module,
// or "" for a package outside it. A test variant ("fs [fs.test]") and a
// test's main package ("fs.test") count as the package itself.
func component(pkg string) string {
	pkg, _, _ = strings.Cut(pkg, " ")
	rest, ok := strings.CutPrefix(pkg, module)
	if !ok {
		return ""
	}
	top, _, _ := strings.Cut(strings.TrimSuffix(rest, ".test"), "/")
	return top
}

// TestImportRule checks every package of the module with its internal
// tests.
func TestImportRule(t *testing.T) {
	cmd := exec.Command("go", "list", "-test", "-f", "{{.ImportPath}}|{{join .Deps \",\"}}", module+"...")
	out, err := cmd.Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	checked := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, deps, _ := strings.Cut(line, "|")
		name, _, _ := strings.Cut(pkg, " ")
		if strings.HasSuffix(name, "_test") || strings.HasSuffix(name, ".test") {
			// An external test package, and the main package of a test
			// that holds it: it may hold the package to its contract
			// with a consumer (cache's tests mount layers with fs).
			continue
		}
		own := component(pkg)
		if own == "" || wiring[own] {
			continue
		}
		checked++
		for _, d := range strings.Split(deps, ",") {
			if c := component(d); c != "" && c != own {
				t.Errorf("%s depends on %s: only cmd/ may join packages of the project", pkg, d)
			}
		}
	}
	if checked < 10 {
		t.Errorf("checked %d packages; the test is looking in the wrong place", checked)
	}
}

// TestComponent pins what counts as one package's own.
func TestComponent(t *testing.T) {
	for pkg, want := range map[string]string{
		module + "fs":                              "fs",
		module + "fs/internal/elfdeps":             "fs",
		module + "fs [" + module + "fs.test]":      "fs",
		module + "fs.test":                         "fs",
		module + "cmd/lazypulld":                   "cmd",
		"github.com/containerd/containerd/v2/core": "",
		"github.com/lazypull/lazypullx/fs":         "",
	} {
		if got := component(pkg); got != want {
			t.Errorf("component(%q) = %q, want %q", pkg, got, want)
		}
	}
}
