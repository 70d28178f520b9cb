package remote

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A host that ignores ranges sends each blob once: its first whole answer
// is kept in a spool file, which serves every later read of the blob,
// concurrent ones included, whatever their kind.
func TestRangeIgnoringHostSendsEachBlobOnce(t *testing.T) {
	reg := newRegistry(t, 1<<20)
	reg.serve = serveWhole(reg.blob)
	b, tail := mustOpen(t, newTestResolver(t, reg), reg, 51)
	if !bytes.Equal(tail, reg.blob[len(reg.blob)-51:]) {
		t.Fatal("wrong tail")
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			off := int64(i) * 100_000
			p := make([]byte, 50_000)
			var err error
			if i%2 == 0 {
				_, err = b.ReadAt(context.Background(), p, off)
			} else {
				_, err = b.ReadAtProgress(context.Background(), p, off, func(int) {})
			}
			if err != nil || !bytes.Equal(p, reg.blob[off:off+50_000]) {
				t.Errorf("read %d at %d: %v", i, off, err)
			}
		})
	}
	wg.Wait()
	if n := len(reg.requests()); n != 1 {
		t.Errorf("%d requests, want 1: the open's whole answer serves every read", n)
	}
}

// A read of a spool waits only for its own bytes, not for the whole blob;
// a host seen to honour ranges at Open and to ignore them later is spooled
// from its first whole answer on.
func TestSpoolServesBytesAsTheyArrive(t *testing.T) {
	reg := newRegistry(t, 1<<20)
	b, _ := mustOpen(t, newTestResolver(t, reg), reg, 51)
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	reg.serve = func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(reg.blob)))
		w.WriteHeader(http.StatusOK)
		w.Write(reg.blob[:len(reg.blob)/2])
		w.(http.Flusher).Flush()
		<-release
		w.Write(reg.blob[len(reg.blob)/2:])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	early := make([]byte, 1000)
	if _, err := b.ReadAt(ctx, early, 100_000); err != nil || !bytes.Equal(early, reg.blob[100_000:101_000]) {
		t.Fatalf("read of the first half while the second is held back: %v", err)
	}
	late := make([]byte, 1000)
	done := make(chan error, 1)
	go func() {
		_, err := b.ReadAt(context.Background(), late, int64(len(reg.blob))-2000)
		done <- err
	}()
	once.Do(func() { close(release) })
	if err := <-done; err != nil || !bytes.Equal(late, reg.blob[len(reg.blob)-2000:len(reg.blob)-1000]) {
		t.Fatalf("read of the second half: %v", err)
	}
	if n := len(reg.requests()); n != 2 {
		t.Errorf("%d requests, want 2: the open and one whole answer", n)
	}
}

// A whole answer that stalls half way is asked again; the spool skips
// what it has.
func TestSpoolDownloadStallIsAskedAgain(t *testing.T) {
	reg := newRegistry(t, 1<<20)
	b, _ := mustOpen(t, newTestResolver(t, reg, WithStallTimeout(time.Second)), reg, 51)
	whole := serveWhole(reg.blob)
	var stalled atomic.Bool
	reg.serve = func(w http.ResponseWriter, r *http.Request) {
		if stalled.Swap(true) {
			whole(w, r)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(reg.blob)))
		w.WriteHeader(http.StatusOK)
		w.Write(reg.blob[:len(reg.blob)/2])
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}
	p := make([]byte, 100_000)
	if _, err := b.ReadAt(context.Background(), p, int64(len(reg.blob))-100_000); err != nil || !bytes.Equal(p, reg.blob[len(reg.blob)-100_000:]) {
		t.Fatalf("ReadAt: %v", err)
	}
	if n := len(reg.requests()); n != 3 {
		t.Errorf("%d requests, want 3: the open, the stalled whole answer and the next", n)
	}
}

// The spools stay within their bound: the least recently read spool goes
// to make room, and is fetched whole again when read again. A blob larger
// than the bound is read out of whole answers as they come.
func TestSpoolBound(t *testing.T) {
	a, b := newRegistry(t, 100_000), newRegistry(t, 100_000)
	big := newRegistry(t, 300_000)
	for _, reg := range []*registry{a, b, big} {
		reg.serve = serveWhole(reg.blob)
	}
	root := t.TempDir()
	for _, reg := range []*registry{a, b, big} {
		dir := filepath.Join(root, reg.host())
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte("server = \""+reg.srv.URL+"\"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	rb, err := NewResolver(WithHostsDir(root), WithCredentials(noCredentials), WithWarmConnections(0), WithSpool(t.TempDir(), 150_000))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rb.Close() })
	ba, _ := mustOpen(t, rb, a, 51)
	bb, _ := mustOpen(t, rb, b, 51)
	bb2, _ := mustOpen(t, rb, big, 51)
	read := func(blob *Blob, reg *registry, off int64) {
		t.Helper()
		p := make([]byte, 1000)
		if _, err := blob.ReadAt(context.Background(), p, off); err != nil || !bytes.Equal(p, reg.blob[off:off+1000]) {
			t.Fatalf("ReadAt: %v", err)
		}
	}
	read(bb, b, 10) // b's spool, from its open
	read(ba, a, 10) // a's spool replaces b's
	if n := len(a.requests()); n != 2 {
		t.Errorf("a: %d requests, want 2", n)
	}
	read(bb, b, 20) // b again, whole
	if n := len(b.requests()); n != 2 {
		t.Errorf("b: %d requests, want 2: fetched whole again after its spool made room", n)
	}
	rb.spools.mu.Lock()
	used := rb.spools.used
	rb.spools.mu.Unlock()
	if used > 150_000 {
		t.Errorf("spools hold %d bytes, bound 150000", used)
	}
	before := len(big.requests())
	read(bb2, big, 100)
	read(bb2, big, 200_000)
	if n := len(big.requests()) - before; n != 2 {
		t.Errorf("big: %d requests, want 2: one whole answer per read", n)
	}
}

// Spool files are unlinked from the start, so nothing is left behind, and
// Close closes them.
func TestSpoolFilesLeaveNothing(t *testing.T) {
	dir := t.TempDir()
	reg := newRegistry(t, 100_000)
	reg.serve = serveWhole(reg.blob)
	r := newTestResolver(t, reg, WithSpool(dir, 1<<20))
	b, _ := mustOpen(t, r, reg, 51)
	if _, err := b.ReadAt(context.Background(), make([]byte, 10), 0); err != nil {
		t.Fatal(err)
	}
	if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
		t.Errorf("spool directory holds %d entries (%v), want none", len(ents), err)
	}
	if n := openUnder(t, dir); n != 1 {
		t.Errorf("%d open files under the spool directory, want 1", n)
	}
	r.Close()
	if n := openUnder(t, dir); n != 0 {
		t.Errorf("%d open files under the spool directory after Close, want 0", n)
	}
}

// openUnder counts this process's open files whose path is under dir.
func openUnder(t *testing.T, dir string) int {
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	n := 0
	for _, fd := range fds {
		if p, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil && strings.HasPrefix(p, dir+"/") {
			n++
		}
	}
	return n
}

// Close stops a download into a spool that is under way, and the reads
// waiting on it fail.
func TestCloseStopsSpoolDownloads(t *testing.T) {
	reg := newRegistry(t, 1<<20)
	r := newTestResolver(t, reg, WithStallTimeout(time.Minute))
	b, _ := mustOpen(t, r, reg, 51)
	started := make(chan struct{})
	reg.serve = func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(reg.blob)))
		w.WriteHeader(http.StatusOK)
		w.Write(reg.blob[:1000])
		w.(http.Flusher).Flush()
		close(started)
		<-req.Context().Done()
	}
	read := make(chan error, 1)
	go func() {
		_, err := b.ReadAt(context.Background(), make([]byte, 100), 500_000)
		read <- err
	}()
	<-started
	r.Close() // returns once the download has stopped
	select {
	case err := <-read:
		if err == nil {
			t.Error("a read of bytes that never came succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a read waiting on a spool did not end 10s after Close")
	}
}
