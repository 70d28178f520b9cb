// Package testbed starts the real processes that lazypull's integration
// tests, demos and benchmarks run against: the distribution registry,
// containerd (1.6 or 2.x) and lazypulld, each in its own short-named
// directory under the system temp dir.
//
// Everything a Start function creates is torn down by t.Cleanup, also when
// the test fails or panics: processes are stopped (SIGTERM, then SIGKILL),
// containerd's tasks, shims and containers are killed, every mount under the
// component's directory is unmounted (in reverse mount order, lazily as a
// last resort) and the directory is removed. Each process logs to a file in
// its directory; the logs are printed with t.Log when the test has failed.
//
// Every Start function needs root.
package testbed

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// T is what the test bed needs of its caller: a *testing.T or *testing.B,
// or a program's own implementation (the benchmark's). Fatal and Fatalf
// must not return (testing's call runtime.Goexit); Cleanup functions run
// last added first once the caller is done, Failed reports whether Errorf,
// Fatal or Fatalf was called, and Logf is where the bed prints the logs of
// its processes when the caller has failed.
type T interface {
	Helper()
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
	Failed() bool
}

var _ T = (testing.TB)(nil)

// RequireRoot skips t unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("integration tests need root (containerd, mounts, runc); run them with sudo or as root")
	}
}

// Dir creates a directory for t with a short path (unix socket paths are
// limited to 108 bytes, so t.TempDir's long names do not fit). At cleanup
// every mount under it is unmounted and it is removed; an error doing so
// fails the test.
func Dir(t T, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "lp-"+prefix+"-")
	if err != nil {
		t.Fatal(err)
	}
	// Resolve symlinks so that paths match /proc/self/mountinfo.
	if dir, err = filepath.EvalSymlinks(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := UnmountUnder(dir); err != nil {
			t.Errorf("cleanup %s: %v", dir, err)
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("cleanup %s: %v", dir, err)
		}
	})
	return dir
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitFor calls ready until it returns nil, the process p exits, or timeout
// passes; the error says which and carries ready's last error.
func waitFor(ctx context.Context, p *process, timeout time.Duration, ready func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited before it was ready: %v (log %s)", p.name, p.waitErr(), p.logPath)
		}
		attempt, cancelAttempt := context.WithTimeout(ctx, 2*time.Second)
		last = ready(attempt)
		cancelAttempt()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %v: %w", p.name, timeout, errors.Join(last, ctx.Err()))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// tail returns at most max bytes from the end of the file at path.
func tail(path string, max int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err.Error()
	}
	off := st.Size() - max
	prefix := ""
	if off > 0 {
		prefix = fmt.Sprintf("(... first %d bytes cut ...)\n", off)
	} else {
		off = 0
	}
	buf := make([]byte, st.Size()-off)
	n, _ := f.ReadAt(buf, off)
	return prefix + strings.TrimRight(string(buf[:n]), "\n")
}

// problems returns the first max lines of the log at path that report a
// warning, an error or a panic, with a note of how many more there were.
func problems(path string, max int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var lines []string
	more := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if !strings.Contains(l, "level=warn") && !strings.Contains(l, "level=error") &&
			!strings.Contains(l, "level=fatal") && !strings.HasPrefix(l, "panic:") {
			continue
		}
		if len(lines) < max {
			lines = append(lines, l)
		} else {
			more++
		}
	}
	if more > 0 {
		lines = append(lines, fmt.Sprintf("(... %d more ...)", more))
	}
	return strings.Join(lines, "\n")
}

func writeFile(path, content string) error {
	return os.WriteFile(path, []byte(content), 0o644)
}
