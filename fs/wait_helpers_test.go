package fs

import (
	"testing"
	"time"
)

// Tests wait for conditions, with a generous deadline, never for a time.

// layerAt returns the view of the layer f serves at mp.
func layerAt(t testing.TB, f *FileSystem, mp string) *Layer {
	t.Helper()
	v, err := f.Layer(mp)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// waitFor waits, up to a generous deadline, for cond.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting after 30s for %s", what)
		}
	}
}

// waitFetches waits for the fetches the layers of f started to end.
func waitFetches(t testing.TB, f *FileSystem) {
	t.Helper()
	f.mu.Lock()
	var ls []*layer
	for _, m := range f.mounts {
		if m.layer != nil {
			ls = append(ls, m.layer)
		}
	}
	f.mu.Unlock()
	// Not l.wg.Wait: a read the kernel still has in flight may start a
	// fetch, and a WaitGroup must not grow from zero during a Wait.
	deadline := time.Now().Add(30 * time.Second)
	for _, l := range ls {
		for l.work.running.Load() != 0 {
			if time.Now().After(deadline) {
				t.Fatal("fetches still running after 30s")
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// waitIdle waits for the goroutines of f (background resolutions,
// entrypoint prefetches, layers' fetches) to end.
func waitIdle(t testing.TB, f *FileSystem) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for f.work.running.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("goroutines still running after 30s")
		}
		time.Sleep(time.Millisecond)
	}
}

// reads is how many reads of blobs o answered.
func reads(o *testOpener) int {
	_, n, _ := o.counts()
	return n
}
