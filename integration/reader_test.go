package integration

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/integration/testbed"
	"github.com/lazypull/lazypull/integration/testimage"
)

// reader is a running container of the test image that hashes files when
// the test asks (hashfiles -loop over two FIFOs bind-mounted at /io): the
// test paces its reads, without sleeping.
type reader struct {
	req    *os.File
	respF  *os.File
	resp   *bufio.Reader
	cmd    *exec.Cmd
	output lockedBuffer
	done   chan error
}

// lockedBuffer is a bytes.Buffer that a command writes while a test reads.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startReader runs image ref as container id, reading on request. It is
// stopped at cleanup (the container then exits and is removed), not when
// the test's context ends.
func startReader(t *testing.T, lb *lazyBed, ref, id string) *reader {
	t.Helper()
	dir := testbed.Dir(t, "io")
	for _, n := range []string{"req", "resp"} {
		if err := unix.Mkfifo(filepath.Join(dir, n), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	r := &reader{done: make(chan error, 1)}
	var err error
	// Opened read-write, neither open waits for the container's.
	if r.req, err = os.OpenFile(filepath.Join(dir, "req"), os.O_RDWR, 0); err != nil {
		t.Fatal(err)
	}
	if r.respF, err = os.OpenFile(filepath.Join(dir, "resp"), os.O_RDWR, 0); err != nil {
		t.Fatal(err)
	}
	r.resp = bufio.NewReader(r.respF)
	r.cmd = lb.Containerd.RunCommandWith(context.Background(), testbed.SnapshotterName, ref, id,
		[]string{"--mount", "type=bind,src=" + dir + ",dst=/io,options=rbind:rw"},
		"/"+testimage.EntrypointPath, "-loop", "/io")
	r.cmd.Stdout, r.cmd.Stderr = &r.output, &r.output
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.done <- r.cmd.Wait() }()
	t.Cleanup(func() {
		if err := r.stop(); err != nil {
			t.Errorf("reader %s: %v", id, err)
		}
		r.respF.Close()
	})
	return r
}

// ask has the container hash paths and returns its answer, one line per
// path, or an error if none came within bound.
func (r *reader) ask(paths []string, bound time.Duration) ([]string, error) {
	if _, err := fmt.Fprintln(r.req, strings.Join(paths, " ")); err != nil {
		return nil, err
	}
	if err := r.respF.SetReadDeadline(time.Now().Add(bound)); err != nil {
		return nil, err
	}
	var lines []string
	for {
		line, err := r.resp.ReadString('\n')
		if err != nil {
			return lines, fmt.Errorf("no whole answer within %v: %w (container output: %s)", bound, err, r.output.String())
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "." {
			return lines, nil
		}
		lines = append(lines, line)
	}
}

// stop ends the container's loop and waits for it to exit.
func (r *reader) stop() error {
	if r.req == nil {
		return nil
	}
	r.req.Close()
	r.req = nil
	select {
	case err := <-r.done:
		if err != nil {
			return fmt.Errorf("container exited with %v: %s", err, r.output.String())
		}
		return nil
	case <-time.After(time.Minute):
		_ = r.cmd.Process.Kill()
		<-r.done
		return errors.New("container did not exit a minute after its requests ended")
	}
}

// readBound bounds one round of reads of the probe files. A read that
// hangs is a failure; a slow machine is not.
const readBound = 2 * time.Minute

// requireReads asks r for paths twice, dropping the page cache in between
// so that the second time the data comes through the FUSE mounts again,
// and fails t unless both answers are want.
func requireReads(t *testing.T, r *reader, paths []string, want, when string) {
	t.Helper()
	for _, drop := range []bool{false, true} {
		if drop {
			dropCaches(t)
		}
		lines, err := r.ask(paths, readBound)
		if err != nil {
			t.Fatalf("%s (page cache dropped: %v): %v", when, drop, err)
		}
		if got := strings.Join(lines, "\n") + "\n"; got != want {
			t.Fatalf("%s (page cache dropped: %v): the container read\n%s\nwant\n%s", when, drop, got, want)
		}
	}
}

// dropCaches drops the kernel's page, dentry and inode caches.
func dropCaches(t *testing.T) {
	t.Helper()
	unix.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		t.Fatal(err)
	}
}

// killPID kills process pid with SIGKILL.
func killPID(pid int) error { return unix.Kill(pid, unix.SIGKILL) }

// processGone reports whether process pid has exited (a zombie counts: its
// new parent may not reap it at once).
func processGone(pid int) bool {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err != nil || strings.Contains(string(st), ") Z ")
}
