package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

const (
	// socketMode lets containerd (root) and members of the socket's group
	// connect; nobody else.
	socketMode = 0o660
	// socketDirMode is used when the socket's directory has to be created.
	socketDirMode = 0o711
	// probeTimeout bounds the dial that tells a live socket from a stale one.
	probeTimeout = 2 * time.Second
)

// listen claims the unix socket at path. A socket left behind by a daemon
// that died is replaced; one that a live process listens on is not, and the
// error names that process. The listener removes the socket when closed.
func listen(ctx context.Context, path string) (*net.UnixListener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, socketDirMode); err != nil {
		return nil, err
	}
	// Hold the directory's lock from the check to the bind, so that two
	// daemons starting together cannot both find the old socket stale
	// and the second remove the first's fresh one.
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	if err := unix.Flock(int(d.Fd()), unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	if err := removeStale(ctx, path); err != nil {
		return nil, err
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		// Linux creates the socket file with the mode of the socket's
		// inode (less the umask), so setting it before bind leaves no
		// moment at which the socket is more open than socketMode.
		var err error
		if cerr := c.Control(func(fd uintptr) { err = unix.Fchmod(int(fd), socketMode) }); cerr != nil {
			return cerr
		}
		return err
	}}
	l, err := lc.Listen(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	return l.(*net.UnixListener), nil
}

// removeStale removes the socket at path if nothing listens on it.
func removeStale(ctx context.Context, path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("address %s exists and is not a socket", path)
	}
	dialer := net.Dialer{Timeout: probeTimeout}
	conn, err := dialer.DialContext(ctx, "unix", path)
	if err == nil {
		who := peer(conn.(*net.UnixConn))
		conn.Close()
		return fmt.Errorf("address %s is in use by %s", path, who)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("check whether %s is in use: %w", path, err)
	}
	log.G(ctx).WithField("address", path).Info("replacing stale socket")
	return os.Remove(path)
}

// peer names the process at the other end of conn, from the credentials
// the kernel recorded when it called listen.
func peer(conn *net.UnixConn) string {
	raw, err := conn.SyscallConn()
	if err != nil {
		return "another process"
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || credErr != nil || cred.Pid <= 0 {
		// The holder is in a PID namespace we cannot see into.
		return "another process"
	}
	pid := strconv.Itoa(int(cred.Pid))
	comm, err := os.ReadFile(filepath.Join("/proc", pid, "comm"))
	if err != nil {
		return "pid " + pid
	}
	return strings.TrimSpace(string(comm)) + " pid " + pid
}
