package doctor

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportsNoOtherPackageOfOurs keeps the checks free of lazypull's
// other packages: cmd/lazypull turns lazypulld's configuration into
// Options.
func TestImportsNoOtherPackageOfOurs(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-test", ".").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	const module = "github.com/lazypull/lazypull/"
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, module) && !strings.HasPrefix(pkg, module+"doctor") {
			t.Errorf("doctor depends on %s", pkg)
		}
	}
}
