package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// lockFileName is the file under the root that a running daemon holds an
// exclusive flock on, and writes its pid to.
const lockFileName = "lazypulld.lock"

// rootLock keeps a second daemon off a root: two daemons on one metadata
// store and one set of mounts would corrupt each other's state.
type rootLock struct {
	f *os.File
}

// lockRoot takes the root's lock without waiting. The lock belongs to the
// open file, so it is released by release or by the process's death; the
// file itself is left in place, since removing it would let a third daemon
// lock a new file while a second still holds the old one.
func lockRoot(root string) (*rootLock, error) {
	path := filepath.Join(root, lockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("root %s is in use by lazypulld %s", root, holder(f))
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	// Record the pid for the error above; the lock, not the content, is
	// what keeps others out.
	if err := f.Truncate(0); err != nil {
		f.Close()
		return nil, err
	}
	if _, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0); err != nil {
		f.Close()
		return nil, err
	}
	return &rootLock{f: f}, nil
}

// holder describes the process named in a held lock file.
func holder(f *os.File) string {
	buf := make([]byte, 32)
	n, _ := f.ReadAt(buf, 0)
	pid, err := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	if err != nil || pid <= 0 {
		// The holder has not written its pid yet.
		return "(pid unknown)"
	}
	return "pid " + strconv.Itoa(pid)
}

// release gives up the lock.
func (l *rootLock) release() error {
	return l.f.Close()
}
