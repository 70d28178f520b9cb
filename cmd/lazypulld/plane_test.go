package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/dataplane"
)

// planeInfos returns the data planes that answer under root.
func planeInfos(t *testing.T, root string) []dataplane.Info {
	t.Helper()
	socks, err := filepath.Glob(filepath.Join(root, planesDir, "*", planeSocket))
	if err != nil {
		t.Fatal(err)
	}
	var infos []dataplane.Info
	for _, s := range socks {
		c := dataplane.NewClient(s)
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		info, err := c.Info(ctx)
		cancel()
		c.Close()
		if err == nil {
			infos = append(infos, info)
		}
	}
	return infos
}

// The data plane a daemon starts outlives it, whether it is killed or
// stopped, and the next daemon adopts it instead of starting another.
// SIGTERM stops the daemon promptly.
func TestDataPlaneOutlivesDaemon(t *testing.T) {
	e := newEnv(t)
	d := start(t, e.args()...)
	d.waitServing(t, e.address)
	infos := planeInfos(t, e.root)
	if len(infos) != 1 || infos[0].Version != version || infos[0].PID == d.pid() {
		t.Fatalf("data planes %+v, want one of version %q in a process of its own", infos, version)
	}
	dp := infos[0].PID
	if sid, _ := unix.Getsid(dp); sid != dp {
		t.Errorf("data plane %d is in session %d, not one of its own", dp, sid)
	}
	// Under systemd the daemon is told where to notify; its data plane
	// must not be.
	if env, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(dp), "environ")); err != nil || bytes.Contains(env, []byte("NOTIFY_SOCKET=")) {
		t.Errorf("data plane environment has NOTIFY_SOCKET (or unreadable: %v)", err)
	}

	if err := d.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	d.wait(t)
	d = start(t, e.args()...)
	d.waitServing(t, e.address)
	if infos := planeInfos(t, e.root); len(infos) != 1 || infos[0].PID != dp {
		t.Fatalf("after SIGKILL and a restart: data planes %+v, want %d adopted", infos, dp)
	}

	// A bound for a daemon with nothing in flight: the data planes are
	// left as they are.
	const exitBound = 10 * time.Second
	begin := time.Now()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.done:
	case <-time.After(exitBound):
		t.Fatalf("daemon still running %v after SIGTERM", exitBound)
	}
	t.Logf("daemon exited %v after SIGTERM", time.Since(begin))
	if d.code != 0 {
		t.Errorf("exit code %d after SIGTERM", d.code)
	}
	if infos := planeInfos(t, e.root); len(infos) != 1 || infos[0].PID != dp {
		t.Fatalf("after SIGTERM: data planes %+v, want %d still serving", infos, dp)
	}
	d = start(t, e.args()...)
	d.waitServing(t, e.address)
	if infos := planeInfos(t, e.root); len(infos) != 1 || infos[0].PID != dp {
		t.Errorf("after SIGTERM and a restart: data planes %+v, want %d adopted", infos, dp)
	}

	// A data plane that dies is replaced.
	if err := syscall.Kill(dp, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		infos := planeInfos(t, e.root)
		if len(infos) == 1 && infos[0].PID != dp {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new data plane a minute after the old one was killed: %+v", infos)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// --stop-data-planes refuses while the daemon runs, then stops them.
	empty := filepath.Join(t.TempDir(), "empty.toml")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	stderr := runFailing(t, "--config", empty, "--root", e.root, "--stop-data-planes")
	if !strings.Contains(stderr, "in use by lazypulld pid") {
		t.Errorf("--stop-data-planes with the daemon running: %q", stderr)
	}
	d.stop(t, syscall.SIGTERM)
	stopPlanes(t, e.root)
	if infos := planeInfos(t, e.root); len(infos) != 0 {
		t.Errorf("data planes left after --stop-data-planes: %+v", infos)
	}
}

// The daemon tells the service manager (here: the test, listening where
// NOTIFY_SOCKET says) when it serves and when it stops.
func TestNotify(t *testing.T) {
	e := newEnv(t)
	sock := filepath.Join(e.dir, "notify")
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	d := start(t, e.args()...)
	next := func() string {
		t.Helper()
		if err := l.SetReadDeadline(time.Now().Add(startTimeout)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 256)
		n, err := l.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v\n%s", err, d.stderr.String())
		}
		return string(buf[:n])
	}
	if got := next(); got != "READY=1" {
		t.Fatalf("first notification %q, want READY=1", got)
	}
	// Ready means serving.
	if c, err := net.Dial("unix", e.address); err != nil {
		t.Errorf("READY=1 before the socket serves: %v", err)
	} else {
		c.Close()
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if got := next(); got != "STOPPING=1" {
		t.Errorf("notification after SIGTERM %q, want STOPPING=1", got)
	}
	d.wait(t)
}
