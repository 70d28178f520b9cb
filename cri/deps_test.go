package cri

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportsNoOtherPackageOfOurs keeps the package a library: cmd wires
// its Store to the registry client through remote's CredentialSource.
func TestImportsNoOtherPackageOfOurs(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-test", ".").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	const module = "github.com/lazypull/lazypull/"
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, module) && !strings.HasPrefix(pkg, module+"cri") {
			t.Errorf("cri depends on %s", pkg)
		}
	}
}
