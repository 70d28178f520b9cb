package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// These tests run the real daemon binary, built once by TestMain (with -race
// when the tests run with it), as a separate process.

var (
	binary     string
	buildFlags []string
)

const (
	// startTimeout is generous: a -race binary on a loaded 2-core machine
	// is slow to start.
	startTimeout = 60 * time.Second
	exitTimeout  = 30 * time.Second
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "lazypulld-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "lazypulld")
	args := append([]string{"build", "-o", binary}, buildFlags...)
	build := exec.Command("go", append(args, ".")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "build lazypulld: %v\n", err)
		return 1
	}
	return m.Run()
}

// env is a private root, socket and (empty) configuration file, so that no
// test reads the machine's /etc/lazypull/config.toml.
type env struct {
	dir, root, address, config string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{
		dir:     dir,
		root:    filepath.Join(dir, "root"),
		address: filepath.Join(dir, "run", "lazypull.sock"),
		config:  filepath.Join(dir, "config.toml"),
	}
	if err := os.WriteFile(e.config, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// Registered first, so it runs after the daemons are stopped: the data
	// planes they started outlive them.
	t.Cleanup(func() { stopPlanes(t, e.root) })
	return e
}

// stopPlanes runs `lazypulld --stop-data-planes` on root, with the default
// configuration, and fails t if it fails.
func stopPlanes(t *testing.T, root string) {
	t.Helper()
	empty := filepath.Join(t.TempDir(), "empty.toml")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(binary, "--config", empty, "--root", root, "--stop-data-planes").CombinedOutput()
	if err != nil {
		t.Errorf("lazypulld --stop-data-planes: %v\n%s", err, out)
	}
}

func (e *env) args(extra ...string) []string {
	return append([]string{"--config", e.config, "--root", e.root, "--address", e.address}, extra...)
}

// syncBuffer collects a process's stderr while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type daemon struct {
	cmd    *exec.Cmd
	stderr syncBuffer
	done   chan struct{} // closed when the process has exited
	code   int
}

// start runs the daemon; the test's cleanup kills it if it is still running.
func start(t *testing.T, args ...string) *daemon {
	t.Helper()
	d := &daemon{done: make(chan struct{})}
	d.cmd = exec.Command(binary, args...)
	d.cmd.Stderr = &d.stderr
	if _, ok := os.LookupEnv("GORACE"); !ok {
		// A -race binary otherwise sleeps a second before exiting.
		d.cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := d.cmd.Wait()
		var exitErr *exec.ExitError
		switch {
		case err == nil:
		case errors.As(err, &exitErr):
			d.code = exitErr.ExitCode()
		default:
			d.code = -1
		}
		close(d.done)
	}()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			d.cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			t.Logf("lazypulld %v stderr:\n%s", args, d.stderr.String())
		}
	})
	return d
}

func (d *daemon) pid() int { return d.cmd.Process.Pid }

// waitServing waits until the daemon answers snapshot calls on address (it
// accepts connections a moment earlier).
func (d *daemon) waitServing(t *testing.T, address string) {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	for {
		err := statOnce(address)
		if err == nil {
			return
		}
		select {
		case <-d.done:
			t.Fatalf("lazypulld exited with %d before serving:\n%s", d.code, d.stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("lazypulld not serving on %s after %v: %v", address, startTimeout, err)
		}
	}
}

// statOnce makes one snapshots call on address; a not-found answer means
// the service answers.
func statOnce(address string) error {
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "lazypull").Stat(ctx, "waitserving-nothing")
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err == nil {
		return errors.New("stat of a missing snapshot succeeded")
	}
	return err
}

// wait returns the daemon's exit code.
func (d *daemon) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-d.done:
		return d.code
	case <-time.After(exitTimeout):
		t.Fatalf("lazypulld still running after %v:\n%s", exitTimeout, d.stderr.String())
		return 0
	}
}

// stop sends sig and returns the exit code.
func (d *daemon) stop(t *testing.T, sig syscall.Signal) int {
	t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	return d.wait(t)
}

// runFailing runs a daemon that is expected to refuse to start and returns
// its stderr.
func runFailing(t *testing.T, args ...string) string {
	t.Helper()
	d := start(t, args...)
	if code := d.wait(t); code != 1 {
		t.Fatalf("lazypulld %v exited with %d, want 1; stderr:\n%s", args, code, d.stderr.String())
	}
	return d.stderr.String()
}

func TestSocketAndRootPermissions(t *testing.T) {
	e := newEnv(t)
	d := start(t, e.args()...)
	d.waitServing(t, e.address)

	for _, c := range []struct {
		path string
		max  os.FileMode
		typ  os.FileMode
	}{
		{e.address, 0o660, os.ModeSocket},
		{filepath.Dir(e.address), 0o711, os.ModeDir},
		{e.root, 0o700, os.ModeDir},
	} {
		fi, err := os.Lstat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Type() != c.typ || fi.Mode().Perm()&^c.max != 0 {
			t.Errorf("%s has mode %v, want a %v no more open than %v", c.path, fi.Mode(), c.typ, c.max)
		}
	}
	lock, err := os.ReadFile(filepath.Join(e.root, lockFileName))
	if err != nil || strings.TrimSpace(string(lock)) != fmt.Sprint(d.pid()) {
		t.Errorf("lock file holds %q, %v; want the pid %d", lock, err, d.pid())
	}
}

func TestStopOnSignal(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			e := newEnv(t)
			d := start(t, e.args()...)
			d.waitServing(t, e.address)
			if code := d.stop(t, sig); code != 0 {
				t.Fatalf("exit code %d after %v, want 0", code, sig)
			}
			if _, err := os.Lstat(e.address); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("socket still there after %v: %v", sig, err)
			}
			// The root's lock went with the daemon: a new one starts on
			// the same root and socket.
			d2 := start(t, e.args()...)
			d2.waitServing(t, e.address)
			if code := d2.stop(t, syscall.SIGTERM); code != 0 {
				t.Errorf("second run exit code %d, want 0", code)
			}
		})
	}
}

func TestSecondDaemonOnSameSocket(t *testing.T) {
	e := newEnv(t)
	d := start(t, e.args()...)
	d.waitServing(t, e.address)

	other := filepath.Join(e.dir, "other-root")
	stderr := runFailing(t, "--config", e.config, "--root", other, "--address", e.address)
	want := fmt.Sprintf("address %s is in use by lazypulld pid %d", e.address, d.pid())
	if !strings.Contains(stderr, want) {
		t.Errorf("stderr %q does not contain %q", stderr, want)
	}
	// The refused daemon left the first one's socket alone.
	d.waitServing(t, e.address)
}

func TestSecondDaemonOnSameRoot(t *testing.T) {
	e := newEnv(t)
	d := start(t, e.args()...)
	d.waitServing(t, e.address)

	otherSocket := filepath.Join(e.dir, "other.sock")
	stderr := runFailing(t, "--config", e.config, "--root", e.root, "--address", otherSocket)
	want := fmt.Sprintf("root %s is in use by lazypulld pid %d", e.root, d.pid())
	if !strings.Contains(stderr, want) {
		t.Errorf("stderr %q does not contain %q", stderr, want)
	}
	if _, err := os.Lstat(otherSocket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused daemon created its socket: %v", err)
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	e := newEnv(t)
	// What a crashed daemon leaves: a socket file nobody listens on.
	if err := os.MkdirAll(filepath.Dir(e.address), 0o711); err != nil {
		t.Fatal(err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: e.address, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	if _, err := net.Dial("unix", e.address); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial stale socket: %v, want connection refused", err)
	}

	d := start(t, e.args()...)
	d.waitServing(t, e.address)
	// The snapshots service answers on it (an unserved socket would give
	// an unavailable error, not a not-found one).
	if _, err := dialSnapshotter(t, e.address).Stat(t.Context(), "nope"); !errdefs.IsNotFound(err) {
		t.Errorf("Stat through the replaced socket = %v, want a not-found error", err)
	}
}

func TestAddressNotASocket(t *testing.T) {
	e := newEnv(t)
	if err := os.MkdirAll(filepath.Dir(e.address), 0o711); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.address, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	stderr := runFailing(t, e.args()...)
	if !strings.Contains(stderr, "is not a socket") {
		t.Errorf("stderr %q does not say the address is not a socket", stderr)
	}
	if b, err := os.ReadFile(e.address); err != nil || string(b) != "keep me" {
		t.Errorf("file at the address changed: %q, %v", b, err)
	}
}
