package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// pidWatch tells when a process exits, whether or not it is a child of
// this one: it waits on a pidfd (Linux 5.10 or later) through the
// runtime's poller, so that a waiter costs no thread and close ends it.
type pidWatch struct {
	pid int
	f   *os.File
}

// watchPID opens a pidfd of pid. The caller closes it.
func watchPID(pid int) (*pidWatch, error) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("pidfd of process %d: %w", pid, err)
	}
	return &pidWatch{pid: pid, f: os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid))}, nil
}

// wait returns nil once the process has exited, or an error once close
// was called.
func (w *pidWatch) wait() error {
	rc, err := w.f.SyscallConn()
	if err != nil {
		return err
	}
	return rc.Read(func(fd uintptr) bool { return exited(int(fd)) })
}

// poll checks every interval whether the process has exited, for when the
// runtime's poller cannot wait on the pidfd. It returns true once the
// process has exited, false once ctx ends or close was called.
func (w *pidWatch) poll(ctx context.Context, interval time.Duration) bool {
	rc, err := w.f.SyscallConn()
	if err != nil {
		return false
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		gone := false
		if err := rc.Control(func(fd uintptr) { gone = exited(int(fd)) }); err != nil {
			return false
		}
		if gone {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

// exited reports whether the process of the pidfd fd has exited: its pidfd
// is then readable.
func exited(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0
}

// reap collects the exit status of the process if it is a child of this
// one, so that it does not stay a zombie; for other processes it does
// nothing.
func (w *pidWatch) reap() {
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(w.pid, &ws, unix.WNOHANG, nil)
		if !errors.Is(err, unix.EINTR) {
			return
		}
	}
}

func (w *pidWatch) close() error { return w.f.Close() }
