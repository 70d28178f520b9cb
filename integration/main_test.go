// Package integration tests lazypull against real containerd (1.6 and 2.x),
// the distribution registry and runc, using the processes of
// integration/testbed and the image of integration/testimage.
//
// The tests need root. TestMain builds lazypulld (with -race when the tests
// are built with -race), the lazypull tool and the test image's entrypoint
// once.
package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lazypull/lazypull/integration/testbed"
)

var (
	// skipReason, when set, makes every test skip.
	skipReason string
	// flavours are the containerd installations every test runs against.
	flavours []testbed.Flavour
	// lazypulldBin, lazypullBin, entrypointBin and pauseBin are built by
	// TestMain.
	lazypulldBin  string
	lazypullBin   string
	entrypointBin string
	pauseBin      string
	// daemonFlags are the flags lazypulldBin was built with.
	daemonFlags []string
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	if os.Geteuid() != 0 {
		skipReason = "integration tests need root (containerd, runc, mounts); run as root"
		return m.Run()
	}
	if err := testbed.CheckRequirements(); err != nil {
		fmt.Fprintf(os.Stderr, "integration: %v\n", err)
		return 1
	}
	var err error
	if flavours, err = testbed.Flavours(); err != nil {
		fmt.Fprintf(os.Stderr, "integration: %v\n", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "lp-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "integration: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	lazypulldBin = filepath.Join(dir, "lazypulld")
	lazypullBin = filepath.Join(dir, "lazypull")
	entrypointBin = filepath.Join(dir, "hashfiles")
	pauseBin = filepath.Join(dir, "pause")
	if raceEnabled {
		daemonFlags = append(daemonFlags, "-race")
	}
	if err := goBuild(lazypulldBin, "../cmd/lazypulld", nil, daemonFlags...); err != nil {
		fmt.Fprintf(os.Stderr, "integration: build lazypulld: %v\n", err)
		return 1
	}
	// The tool is not what these tests check for races; built without
	// -race it converts images several times faster.
	if err := goBuild(lazypullBin, "../cmd/lazypull", nil); err != nil {
		fmt.Fprintf(os.Stderr, "integration: build lazypull: %v\n", err)
		return 1
	}
	for _, b := range []struct{ out, pkg string }{{entrypointBin, "./cmd/hashfiles"}, {pauseBin, "./cmd/pause"}} {
		if err := goBuild(b.out, b.pkg, []string{"CGO_ENABLED=0"}, "-trimpath", "-ldflags=-s -w"); err != nil {
			fmt.Fprintf(os.Stderr, "integration: build %s: %v\n", b.pkg, err)
			return 1
		}
	}
	return m.Run()
}

func goBuild(out, pkg string, env []string, flags ...string) error {
	args := append(append([]string{"build", "-o", out}, flags...), pkg)
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return nil
}

// forEachFlavour runs fn as a subtest per containerd flavour.
func forEachFlavour(t *testing.T, fn func(t *testing.T, f testbed.Flavour)) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	for _, f := range flavours {
		t.Run("containerd-"+f.Name, func(t *testing.T) { fn(t, f) })
	}
}
