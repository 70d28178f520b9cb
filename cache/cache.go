// Package cache stores content-addressed blobs of data in a local directory.
//
// A Dir keeps one file per entry, named by the entry's digest, under a
// two-hex-digit fan-out directory (sha256/ab/abcdef...). Entries are written
// to a temporary file and renamed into place, so a reader sees a whole entry
// or none, never a torn one.
//
// Entries are not fsynced and not verified on read: the cache is treated as
// untrusted, and its consumer (package fs) verifies every entry against its
// digest before use. A crash may therefore leave an entry empty or garbled,
// which the consumer sees as a miss and overwrites. This keeps writes cheap on
// the read path of a lazily pulled file.
//
// Dir is safe for concurrent use. Its size is not bounded yet: entries are
// only added (or replaced, or deleted by Delete).
package cache

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	digest "github.com/opencontainers/go-digest"
)

// tmpDir holds entries being written; it is on the same filesystem as the
// entries, so that rename is atomic.
const tmpDir = "tmp"

// Dir is a cache in a directory.
type Dir struct {
	root string
}

// NewDir returns the cache stored under root, creating root if needed and
// removing temporary files that a crash left behind. One directory must not
// be used by two Dirs at once.
func NewDir(root string) (*Dir, error) {
	tmp := filepath.Join(root, tmpDir)
	if err := os.RemoveAll(tmp); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	return &Dir{root: root}, nil
}

// Root is the directory the cache is stored in.
func (d *Dir) Root() string { return d.root }

// Get copies the entry of key into p and returns its length. ok is false if
// there is no such entry, it does not fit in p, or it cannot be read.
func (d *Dir) Get(key digest.Digest, p []byte) (n int, ok bool) {
	path, err := d.path(key)
	if err != nil {
		return 0, false
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() > int64(len(p)) {
		return 0, false
	}
	n, err = io.ReadFull(f, p[:st.Size()])
	if err != nil {
		return 0, false
	}
	return n, true
}

// Put stores data under key. An existing entry is replaced: the caller may
// have found it corrupt.
func (d *Dir) Put(key digest.Digest, data []byte) (retErr error) {
	path, err := d.path(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Join(d.root, tmpDir), "")
	if err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	defer func() {
		if retErr != nil {
			os.Remove(tmp.Name())
		}
	}()
	_, err = tmp.Write(data)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cache: write %s: %w", key, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	return nil
}

// Delete removes the entry of key, if any.
func (d *Dir) Delete(key digest.Digest) error {
	path, err := d.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cache: %w", err)
	}
	return nil
}

// path returns where the entry of key lives. Keys are validated, so a key
// cannot name a path outside the cache.
func (d *Dir) path(key digest.Digest) (string, error) {
	if err := key.Validate(); err != nil {
		return "", fmt.Errorf("cache: key %q: %w", key, err)
	}
	enc := key.Encoded()
	return filepath.Join(d.root, key.Algorithm().String(), enc[:2], enc), nil
}
