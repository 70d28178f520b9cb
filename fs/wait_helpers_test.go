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

// eventually reports whether cond held within d: the one way the tests of
// fs wait for a state they cannot be told of, checking it every
// millisecond.
func eventually(d time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(d); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			return cond()
		}
	}
	return true
}

// waitFor waits, up to a generous deadline, for cond.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if !eventually(30*time.Second, cond) {
		t.Fatalf("still waiting after 30s for %s", what)
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
	for _, l := range ls {
		waitFor(t, "the layer's fetches to end", func() bool { return l.work.running.Load() == 0 })
	}
}

// waitIdle waits for the goroutines of f (background resolutions,
// entrypoint prefetches, layers' fetches) to end.
func waitIdle(t testing.TB, f *FileSystem) {
	t.Helper()
	waitFor(t, "the FileSystem's goroutines to end", func() bool { return f.work.running.Load() == 0 })
}

// reads is how many reads of blobs o answered.
func reads(o *testOpener) int {
	_, n, _ := o.counts()
	return n
}
