package main

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/cache"
)

// TestCacheConfig checks that [cache] dir is the cache the daemon keeps
// across restarts: its data plane uses the directory the file names, keeps
// its entries and clears what a crash left in it, and a daemon of another
// root may share it.
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
	if _, err := os.Stat(leftover); !os.IsNotExist(err) {
		t.Errorf("temp file left in the cache: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.root, "cache")); !os.IsNotExist(err) {
		t.Errorf("<root>/cache used although [cache] dir is set: %v", err)
	}
	// A second daemon (another root) shares the cache.
	e2 := newEnv(t)
	d2 := start(t, "--config", e.config, "--root", e2.root, "--address", e2.address)
	d2.waitServing(t, e2.address)
	for _, d := range []*daemon{d, d2} {
		if code := d.stop(t, syscall.SIGTERM); code != 0 {
			t.Errorf("exit code %d, want 0", code)
		}
	}
	stopPlanes(t, e.root)
	stopPlanes(t, e2.root)

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
