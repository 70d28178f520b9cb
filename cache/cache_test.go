package cache

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"

	digest "github.com/opencontainers/go-digest"
)

func TestPutGet(t *testing.T) {
	d, err := NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("hello chunk")
	key := digest.FromBytes(data)
	if err := d.Put(key, data); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 64)
	n, ok := d.Get(key, p)
	if !ok || !bytes.Equal(p[:n], data) {
		t.Fatalf("Get = %q, %v; want %q", p[:n], ok, data)
	}
	enc := key.Encoded()
	if _, err := os.Stat(filepath.Join(d.Root(), "sha256", enc[:2], enc)); err != nil {
		t.Fatalf("entry not at its fan-out path: %v", err)
	}
}

func TestGetMiss(t *testing.T) {
	d, err := NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("0123456789")
	key := digest.FromBytes(data)
	if _, ok := d.Get(key, make([]byte, 10)); ok {
		t.Fatal("Get of an absent key succeeded")
	}
	if err := d.Put(key, data); err != nil {
		t.Fatal(err)
	}
	if _, ok := d.Get(key, make([]byte, 9)); ok {
		t.Fatal("Get into a too small buffer succeeded")
	}
	if err := d.Delete(key); err != nil {
		t.Fatal(err)
	}
	if _, ok := d.Get(key, make([]byte, 10)); ok {
		t.Fatal("Get after Delete succeeded")
	}
	if err := d.Delete(key); err != nil {
		t.Fatalf("Delete of an absent key: %v", err)
	}
}

func TestPutReplaces(t *testing.T) {
	d, err := NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	key := digest.FromString("x")
	if err := d.Put(key, []byte("corrupt")); err != nil {
		t.Fatal(err)
	}
	if err := d.Put(key, []byte("x")); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 16)
	if n, ok := d.Get(key, p); !ok || string(p[:n]) != "x" {
		t.Fatalf("Get = %q, %v; want the replacement", p[:n], ok)
	}
}

func TestInvalidKey(t *testing.T) {
	d, err := NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []digest.Digest{"", "sha256:../../etc", "sha256:abc", "md5:00"} {
		if err := d.Put(key, []byte("x")); err == nil {
			t.Errorf("Put(%q) succeeded", key)
		}
		if _, ok := d.Get(key, make([]byte, 1)); ok {
			t.Errorf("Get(%q) succeeded", key)
		}
	}
}

func TestNewDirRemovesTemps(t *testing.T) {
	root := t.TempDir()
	d, err := NewDir(root)
	if err != nil {
		t.Fatal(err)
	}
	key := digest.FromString("kept")
	if err := d.Put(key, []byte("kept")); err != nil {
		t.Fatal(err)
	}
	torn := filepath.Join(root, tmpDir, "leftover")
	if err := os.WriteFile(torn, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err = NewDir(root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(torn); !os.IsNotExist(err) {
		t.Fatalf("temp file survived NewDir: %v", err)
	}
	if _, ok := d.Get(key, make([]byte, 4)); !ok {
		t.Fatal("entry lost by NewDir")
	}
}

// TestNoTornEntries has readers race writers of one key: a reader sees the
// whole entry or nothing.
func TestNoTornEntries(t *testing.T) {
	d, err := NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<14)
	key := digest.FromBytes(data)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for range 20 {
				if err := d.Put(key, data); err != nil {
					t.Error(err)
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			p := make([]byte, len(data))
			for range 50 {
				if n, ok := d.Get(key, p); ok && (n != len(data) || !bytes.Equal(p, data)) {
					t.Errorf("torn entry: %d bytes", n)
					return
				}
			}
		}()
	}
	wg.Wait()
	entries, err := os.ReadDir(filepath.Join(d.Root(), tmpDir))
	if err != nil || len(entries) != 0 {
		t.Fatalf("temp files left: %v %v", entries, err)
	}
}
