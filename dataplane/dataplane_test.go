package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

// testFS is the FileSystem a data plane serves, reduced to what the
// protocol carries: Mount fails with the error its labels name, and blocks
// while block is set.
type testFS struct {
	mu      sync.Mutex
	mounted map[string]bool
	block   chan struct{} // Mount waits for it when not nil
	entered chan string   // gets each blocked Mount's mountpoint
	ctxErr  chan error    // gets the ctx error of a Mount released by its ctx
}

func newTestFS() *testFS { return &testFS{mounted: map[string]bool{}} }

func (f *testFS) Mount(ctx context.Context, mp string, labels map[string]string) error {
	if err := labels["error"]; err != "" {
		return fmt.Errorf("layer at %s: %s", mp, err)
	}
	if c := labels["class"]; c != "" {
		for _, k := range classes {
			if k.name == c {
				return fmt.Errorf("layer at %s: %w", mp, k.sentinel)
			}
		}
	}
	if f.block != nil {
		f.entered <- mp
		select {
		case <-f.block:
		case <-ctx.Done():
			f.ctxErr <- ctx.Err()
			return ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mounted[mp] = true
	return nil
}

func (f *testFS) Check(ctx context.Context, mp string, labels map[string]string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.mounted[mp] {
		return fmt.Errorf("mountpoint %s: %w", mp, errdefs.ErrNotFound)
	}
	return nil
}

func (f *testFS) Unmount(ctx context.Context, mp string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.mounted[mp] {
		return fmt.Errorf("mountpoint %s: %w", mp, errdefs.ErrNotFound)
	}
	delete(f.mounted, mp)
	return nil
}

// serve starts a Server of fsys on a socket in a temporary directory and
// returns a Client of it and a channel closed when the Server's stop
// function is called.
func serve(t *testing.T, fsys FileSystem) (*Client, <-chan struct{}) {
	t.Helper()
	c, _, stopped := serveServer(t, fsys)
	return c, stopped
}

// serveServer is serve that also returns the Server.
func serveServer(t *testing.T, fsys FileSystem, opts ...ServerOption) (*Client, *Server, <-chan struct{}) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stopped := make(chan struct{})
	s := NewServer(fsys, Info{Version: "v-test", Build: "b-test", PID: os.Getpid()}, func() { close(stopped) }, opts...)
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	c := NewClient(sock)
	t.Cleanup(func() {
		c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})
	return c, s, stopped
}

// Every errdefs class the FileSystem gives an error crosses the socket as
// itself, with the data plane's message: the snapshotter's fallback
// reasons and the daemon's gRPC answers depend on them.
func TestErrorClassesCross(t *testing.T) {
	c, _ := serve(t, newTestFS())
	ctx := t.Context()
	for _, k := range classes {
		err := mountErr(ctx, c, "/mp/"+k.name, map[string]string{"class": k.name})
		if !errors.Is(err, k.sentinel) {
			t.Errorf("class %q: Mount = %v, which does not match %v", k.name, err, k.sentinel)
		}
		if want := "layer at /mp/" + k.name + ": " + k.sentinel.Error(); err == nil || err.Error() != want {
			t.Errorf("class %q: message %q, want %q", k.name, err, want)
		}
		for _, other := range classes {
			if other.name != k.name && other.is(err) && !other.is(k.sentinel) {
				t.Errorf("class %q: the error also matches %q", k.name, other.name)
			}
		}
	}
	// An error of no class stays without one.
	err := mountErr(ctx, c, "/mp/plain", map[string]string{"error": "plain failure"})
	if err == nil || err.Error() != "layer at /mp/plain: plain failure" {
		t.Fatalf("Mount = %v", err)
	}
	for _, k := range classes {
		if k.is(err) {
			t.Errorf("an error of no class matches %q", k.name)
		}
	}
}

func TestMountsCheckUnmount(t *testing.T) {
	c, _ := serve(t, newTestFS())
	ctx := t.Context()
	labels := map[string]string{"containerd.io/snapshot/cri.layer-digest": "sha256:aa"}
	if err := mountErr(ctx, c, "/mp/a", labels); err != nil {
		t.Fatal(err)
	}
	if err := mountErr(ctx, c, "/mp/b", nil); err != nil {
		t.Fatal(err)
	}
	if err := mountErr(ctx, c, "/mp/c", map[string]string{"class": "not implemented"}); err == nil {
		t.Fatal("failing Mount succeeded")
	}
	ms, err := c.Mounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[0].Mountpoint != "/mp/a" || ms[0].Labels["containerd.io/snapshot/cri.layer-digest"] != "sha256:aa" || ms[1].Mountpoint != "/mp/b" {
		t.Errorf("Mounts = %+v, want /mp/a with its labels and /mp/b", ms)
	}
	if err := c.Check(ctx, "/mp/a", labels); err != nil {
		t.Errorf("Check of a mounted layer: %v", err)
	}
	if err := c.Unmount(ctx, "/mp/a"); err != nil {
		t.Fatal(err)
	}
	if err := c.Check(ctx, "/mp/a", labels); !errdefs.IsNotFound(err) {
		t.Errorf("Check after Unmount = %v, want not found", err)
	}
	if err := c.Unmount(ctx, "/mp/a"); !errdefs.IsNotFound(err) {
		t.Errorf("second Unmount = %v, want not found", err)
	}
	if ms, _ := c.Mounts(ctx); len(ms) != 1 || ms[0].Mountpoint != "/mp/b" {
		t.Errorf("Mounts after Unmount = %+v, want /mp/b", ms)
	}
	info, err := c.Info(ctx)
	if err != nil || info.Version != "v-test" || info.Build != "b-test" || info.PID != os.Getpid() {
		t.Errorf("Info = %+v, %v", info, err)
	}
}

// Calls are served concurrently: n Mounts that each wait until all n have
// started complete only if none waits for another.
func TestConcurrentCalls(t *testing.T) {
	const n = 40
	fsys := newTestFS()
	fsys.block, fsys.entered = make(chan struct{}), make(chan string, n)
	c, _ := serve(t, fsys)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	errs := make(chan error, n)
	for i := range n {
		go func() { errs <- mountErr(ctx, c, fmt.Sprintf("/mp/%d", i), nil) }()
	}
	for range n {
		select {
		case <-fsys.entered:
		case <-ctx.Done():
			t.Fatal("Mounts were not all in flight at once")
		}
	}
	// Other calls are answered meanwhile.
	if _, err := c.Info(ctx); err != nil {
		t.Fatal(err)
	}
	close(fsys.block)
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if ms, err := c.Mounts(ctx); err != nil || len(ms) != n {
		t.Errorf("Mounts = %d, %v; want %d", len(ms), err, n)
	}
}

// A mountpoint takes one Mount or Unmount at a time; a caller that gives
// up cancels the data plane's work.
func TestSameMountpointAndCancel(t *testing.T) {
	fsys := newTestFS()
	fsys.block, fsys.entered, fsys.ctxErr = make(chan struct{}), make(chan string, 1), make(chan error, 1)
	c, _ := serve(t, fsys)
	ctx, cancel := context.WithCancel(t.Context())
	first := make(chan error, 1)
	go func() { first <- mountErr(ctx, c, "/mp/x", nil) }()
	<-fsys.entered
	if err := mountErr(t.Context(), c, "/mp/x", nil); !errdefs.IsConflict(err) {
		t.Errorf("second Mount of a busy mountpoint = %v, want conflict", err)
	}
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled Mount = %v, want context canceled", err)
	}
	select {
	case err := <-fsys.ctxErr:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("data plane's Mount ended with %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the data plane's Mount was not cancelled")
	}
	if ms, _ := c.Mounts(t.Context()); len(ms) != 0 {
		t.Errorf("Mounts after a cancelled Mount = %+v", ms)
	}
}

func TestShutdown(t *testing.T) {
	fsys := newTestFS()
	c, stopped := serve(t, fsys)
	ctx := t.Context()
	if err := mountErr(ctx, c, "/mp/a", nil); err != nil {
		t.Fatal(err)
	}
	// A drain of a data plane that serves a layer is refused.
	if err := c.Shutdown(ctx, false); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Shutdown(drain) with a mount = %v, want failed precondition", err)
	}
	select {
	case <-stopped:
		t.Fatal("a refused drain stopped the data plane")
	default:
	}
	if err := c.Shutdown(ctx, true); err != nil {
		t.Fatal(err)
	}
	<-stopped
	if len(fsys.mounted) != 0 {
		t.Errorf("layers left mounted: %v", fsys.mounted)
	}
	if err := mountErr(ctx, c, "/mp/b", nil); !errdefs.IsUnavailable(err) {
		t.Errorf("Mount on a stopping data plane = %v, want unavailable", err)
	}
}

func TestUnknownCallAndNoDataPlane(t *testing.T) {
	c, _ := serve(t, newTestFS())
	err := c.call(t.Context(), http.MethodGet, "/v1/status", nil, nil)
	if !errdefs.IsNotImplemented(err) {
		t.Errorf("unknown call = %v, want not implemented", err)
	}
	gone := NewClient(filepath.Join(t.TempDir(), "nothing"))
	defer gone.Close()
	err = gone.Check(t.Context(), "/mp", nil)
	if !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), gone.Socket()) {
		t.Errorf("call to a missing socket = %v, want unavailable naming the socket", err)
	}
}

// mountErr is c.Mount's error.
func mountErr(ctx context.Context, c *Client, mountpoint string, labels map[string]string) error {
	_, err := c.Mount(ctx, mountpoint, labels)
	return err
}

// keeperFS is a testFS that takes credentials.
type keeperFS struct {
	*testFS
	mu  sync.Mutex
	got []Credentials
}

func (k *keeperFS) SetCredentials(c Credentials) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.got = append(k.got, c)
}

// Credentials reach a FileSystem that takes them, as sent; one that does
// not answers "not implemented", which the daemon tells from a failure.
func TestCredentials(t *testing.T) {
	ctx := context.Background()
	k := &keeperFS{testFS: newTestFS()}
	c, _ := serve(t, k)
	want := Credentials{Host: "registry.example", Repo: "team/app", User: "u", Secret: "s", Expires: time.Unix(2_000_000_000, 0).UTC()}
	if err := c.SetCredentials(ctx, want); err != nil {
		t.Fatal(err)
	}
	if err := c.SetCredentials(ctx, Credentials{Repo: "x"}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("credentials without a host: %v, want invalid argument", err)
	}
	k.mu.Lock()
	got := k.got
	k.mu.Unlock()
	if len(got) != 1 || got[0].Host != want.Host || got[0].Repo != want.Repo || got[0].User != want.User ||
		got[0].Secret != want.Secret || !got[0].Expires.Equal(want.Expires) {
		t.Errorf("FileSystem got %+v, want [%+v]", got, want)
	}

	plain, _ := serve(t, newTestFS())
	if err := plain.SetCredentials(ctx, want); !errdefs.IsNotImplemented(err) {
		t.Errorf("credentials to a FileSystem that takes none: %v, want not implemented", err)
	}
}

// Runtime tells what the data plane's heap holds; with gc, only what is
// live: memory held while it is in use and given back when it is not, as
// an operator (or a test) who removed layers expects to see.
func TestRuntime(t *testing.T) {
	c, _ := serve(t, newTestFS())
	ctx := t.Context()
	const size = 64 << 20
	held := make([]byte, size)
	for i := range held {
		held[i] = byte(i)
	}
	with, err := c.Runtime(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if with.Goroutines < 2 || with.HeapObjects == 0 || with.Sys < with.HeapInuse {
		t.Errorf("Runtime = %+v: implausible", with)
	}
	if with.HeapAlloc < size {
		t.Errorf("heap %d bytes while %d are held", with.HeapAlloc, size)
	}
	runtime.KeepAlive(held)
	held = nil
	without, err := c.Runtime(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if without.NumGC <= with.NumGC {
		t.Errorf("gc=1 ran no garbage collection: %d, then %d", with.NumGC, without.NumGC)
	}
	if without.HeapAlloc > with.HeapAlloc-size/2 {
		t.Errorf("heap %d bytes once %d bytes were dropped, %d while held", without.HeapAlloc, size, with.HeapAlloc)
	}
}
