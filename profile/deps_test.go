package profile

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportsNoOtherPackageOfOurs keeps the package a library that cmd
// wires to the registry client and the layer filesystem through the
// Registry and Target interfaces.
func TestImportsNoOtherPackageOfOurs(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-test", ".").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	const module = "github.com/lazypull/lazypull/"
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, module) && !strings.HasPrefix(pkg, module+"profile") {
			t.Errorf("profile depends on %s", pkg)
		}
	}
}
