package cache

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// smallDisk mounts a tmpfs of size bytes on a new directory and returns it;
// the test is skipped where mounting is not allowed.
func smallDisk(t *testing.T, size string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "disk")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		t.Skipf("mount tmpfs (needs root): %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// TestDiskFull fills a small disk: the Put that fails returns ENOSPC, the
// cache then drops writes for a while and lowers its bound below what it
// holds, evicting the oldest entries; the entries it keeps are still served,
// and once the pause ends, writes succeed in the room the eviction made.
func TestDiskFull(t *testing.T) {
	const size = 64 << 10
	d := indexed(newDir(t, smallDisk(t, "1m"), WithMaxSize(0)))
	var stored []int
	var err error
	for i := 0; i < 64 && err == nil; i++ {
		data, key := chunk(i, size)
		if err = d.Put(key, data); err == nil {
			stored = append(stored, i)
		}
	}
	if !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("filling the disk: %v, want ENOSPC", err)
	}
	st := d.Stats()
	if st.WriteErrors != 1 || st.Limit == 0 || st.Bytes > st.Limit || st.Evictions == 0 {
		t.Errorf("after ENOSPC: %+v; want a bound below the bytes stored (%d) and evictions", st, len(stored)*size)
	}
	if !d.paused() {
		t.Fatal("writes not paused")
	}
	// While paused, Put neither writes nor fails.
	data, key := chunk(1000, size)
	if err := d.Put(key, data); err != nil || has(d, key) {
		t.Errorf("Put while paused: %v, stored %v", err, has(d, key))
	}
	// The most recent entries are still served.
	last := stored[len(stored)-1]
	want, lastKey := chunk(last, size)
	p := make([]byte, size)
	if n, ok := d.Get(lastKey, p); !ok || n != size || string(p) != string(want) {
		t.Errorf("Get of the newest entry on a full disk: %d, %v", n, ok)
	}
	d.unpause()
	if err := d.Put(key, data); err != nil || !has(d, key) {
		t.Errorf("Put after the pause: %v, stored %v", err, has(d, key))
	}
	st = d.Stats()
	if st.WriteErrors != 1 || st.Dropped != 1 {
		t.Errorf("Stats = %+v", st)
	}
	checkIndex(t, d)
}

// paused reports whether writes are paused.
func (d *Dir) paused() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.now().Before(d.pausedUntil)
}

// unpause ends a pause early.
func (d *Dir) unpause() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pausedUntil = d.now().Add(-1)
}
