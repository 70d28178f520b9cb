package testbed

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Containerd2Version is the containerd 2.x release hack/build-containerd2.sh builds.
const Containerd2Version = "v2.4.2"

// CrictlVersion is the cri-tools release hack/build-crictl.sh builds.
const CrictlVersion = "v1.37.0"

// DockerdVersion is the version of module github.com/moby/moby/v2 (Docker
// Engine 29) whose dockerd hack/build-dockerd.sh builds.
const DockerdVersion = "v2.0.0-beta.24"

const depsHint = "run `make deps` (hack/install-deps.sh and the hack/build-*.sh scripts)"

// Flavour is a containerd installation: where its binaries are and which
// configuration schema it reads.
type Flavour struct {
	// Name is "1.6" or "2.x"; it names subtests.
	Name string
	// BinDir holds containerd, ctr and containerd-shim-runc-v2.
	BinDir string
	// ConfigVersion is the config.toml schema version (2 for 1.x, 3 for 2.x).
	ConfigVersion int
}

// Containerd16 is Debian 12's containerd 1.6 in /usr/bin.
func Containerd16() (Flavour, error) {
	f := Flavour{Name: "1.6", BinDir: "/usr/bin", ConfigVersion: 2}
	return f, f.check()
}

// Containerd2 is containerd v2.4.2 built by hack/build-containerd2.sh, found
// in $LAZYPULL_CONTAINERD2_DIR or the script's default cache directory.
func Containerd2() (Flavour, error) {
	dir, err := cachedBinDir("LAZYPULL_CONTAINERD2_DIR", "containerd-"+Containerd2Version)
	if err != nil {
		return Flavour{}, err
	}
	f := Flavour{Name: "2.x", BinDir: dir, ConfigVersion: 3}
	return f, f.check()
}

// CrictlBinary returns the path of crictl built by hack/build-crictl.sh, found in
// $LAZYPULL_CRICTL_DIR or the script's default cache directory.
func CrictlBinary() (string, error) {
	dir, err := cachedBinDir("LAZYPULL_CRICTL_DIR", "cri-tools-"+CrictlVersion)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "crictl")
	return bin, checkBinary(bin)
}

// DockerdBinary returns the path of dockerd built by hack/build-dockerd.sh, found
// in $LAZYPULL_DOCKERD_DIR or the script's default cache directory.
func DockerdBinary() (string, error) {
	dir, err := cachedBinDir("LAZYPULL_DOCKERD_DIR", "moby-"+DockerdVersion)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "dockerd")
	return bin, checkBinary(bin)
}

// cachedBinDir is $env, else the bin directory of name in the cache
// directory the hack/build-*.sh scripts build into.
func cachedBinDir(env, name string) (string, error) {
	if dir := os.Getenv(env); dir != "" {
		return dir, nil
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", err
		}
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "lazypull", name, "bin"), nil
}

// Flavours returns every containerd flavour the tests run against, or an
// error naming what is missing.
func Flavours() ([]Flavour, error) {
	f16, err := Containerd16()
	if err != nil {
		return nil, err
	}
	f2, err := Containerd2()
	if err != nil {
		return nil, err
	}
	return []Flavour{f16, f2}, nil
}

func (f Flavour) bin(name string) string { return filepath.Join(f.BinDir, name) }

func (f Flavour) check() error {
	for _, b := range []string{"containerd", "ctr", "containerd-shim-runc-v2"} {
		if err := checkBinary(f.bin(b)); err != nil {
			return fmt.Errorf("containerd %s: %w", f.Name, err)
		}
	}
	if _, err := exec.LookPath("runc"); err != nil {
		return fmt.Errorf("runc not in PATH: %s", depsHint)
	}
	return nil
}

func checkBinary(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%s is missing: %s", path, depsHint)
	}
	if st.Mode()&0o111 == 0 {
		return fmt.Errorf("%s is not executable: %s", path, depsHint)
	}
	return nil
}

// CheckRequirements reports the first binary the test bed needs and cannot
// find, with a hint how to install it.
func CheckRequirements() error {
	if err := checkBinary(RegistryBinary); err != nil {
		return err
	}
	_, err := Flavours()
	return err
}
