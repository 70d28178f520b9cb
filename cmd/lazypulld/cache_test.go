package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/cache"
)

// TestCacheConfig checks that [cache] dir is the cache the daemon keeps
// across restarts: a daemon uses the directory the file names (and no
// other daemon can), keeps its entries and clears what a crash left in it.
func TestCacheConfig(t *testing.T) {
	e := newEnv(t)
	dir := filepath.Join(e.dir, "chunks")
	doc := fmt.Sprintf("[cache]\ndir = %q\nmax_size = \"64MiB\"\n", dir)
	if err := os.WriteFile(e.config, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := cache.NewDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("a chunk from before the restart")
	key := digest.FromBytes(data)
	if err := c.Put(key, data); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	leftover := filepath.Join(dir, "tmp", "torn")
	if err := os.WriteFile(leftover, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}

	d := start(t, e.args()...)
	d.waitServing(t, e.address)
	if _, err := cache.NewDir(dir); !errdefs.IsUnavailable(err) {
		t.Errorf("cache dir not held by the daemon: NewDir = %v", err)
	}
	if _, err := os.Stat(leftover); !os.IsNotExist(err) {
		t.Errorf("temp file left in the cache: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.root, "cache")); !os.IsNotExist(err) {
		t.Errorf("<root>/cache used although [cache] dir is set: %v", err)
	}
	// A second daemon (another root) cannot share the cache.
	e2 := newEnv(t)
	stderr := runFailing(t, "--config", e.config, "--root", e2.root, "--address", e2.address)
	if !strings.Contains(stderr, dir) {
		t.Errorf("second daemon's error %q does not name %s", stderr, dir)
	}
	if code := d.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}

	c, err = cache.NewDir(dir)
	if err != nil {
		t.Fatalf("cache dir not released: %v", err)
	}
	defer c.Close()
	p := make([]byte, 64)
	if n, ok := c.Get(key, p); !ok || string(p[:n]) != string(data) {
		t.Errorf("entry lost across the daemon's run: %q, %v", p[:n], ok)
	}
}
