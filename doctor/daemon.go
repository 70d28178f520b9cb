package doctor

import (
	"bytes"
	"context"
	"crypto/rand"
	"debug/buildinfo"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"regexp"
	"strconv"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// daemonInfo is what was learnt about the running lazypulld.
type daemonInfo struct {
	pid     int      // 0 when unknown
	env     []string // its environment; nil when unreadable
	userNS  bool     // it runs in a user namespace other than init's
	version string
}

// checkDaemon checks that lazypulld answers a snapshots API call on its
// socket, through containerd's own proxy client, and finds its process.
func (r *run) checkDaemon(ctx context.Context) {
	const check = "lazypulld"
	sock := r.opts.Lazypull.Address
	start := "start it (systemctl enable --now lazypulld) and read its log (journalctl -u lazypulld) if it does not stay up"
	st, err := os.Stat(sock)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		r.add(check, Fail, fmt.Sprintf("no socket at %s: lazypulld is not running (or serves elsewhere: --address, or address in its config)", sock), start)
		return
	case errors.Is(err, fs.ErrPermission):
		r.add(check, Warn, fmt.Sprintf("cannot see %s: %v", sock, err), "run doctor as root")
		return
	case err != nil:
		r.add(check, Fail, err.Error(), start)
		return
	case st.Mode()&fs.ModeSocket == 0:
		r.add(check, Fail, fmt.Sprintf("%s is not a socket", sock), "remove it and restart lazypulld")
		return
	}
	ctx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", sock)
	switch {
	case errors.Is(err, unix.ECONNREFUSED):
		r.add(check, Fail, fmt.Sprintf("nothing listens on %s: the socket is left by a lazypulld that exited", sock), start)
		return
	case errors.Is(err, unix.EACCES):
		r.add(check, Warn, fmt.Sprintf("not allowed to connect to %s", sock), "run doctor as root (containerd connects as root)")
		return
	case err != nil:
		r.add(check, Fail, fmt.Sprintf("connect to %s: %v", sock, err), start)
		return
	}
	r.daemon = inspectPeer(conn.(*net.UnixConn))
	conn.Close()
	if err := statAbsent(ctx, sock, r.opts.Snapshotter); err != nil {
		r.add(check, Fail, fmt.Sprintf("%s does not answer the snapshots API: %v", describeDaemon(r.daemon, sock), err),
			"check that the process on the socket is lazypulld, and its log")
		return
	}
	r.add(check, OK, describeDaemon(r.daemon, sock)+" answers the snapshots API", "")
}

func describeDaemon(d daemonInfo, sock string) string {
	s := "lazypulld on " + sock
	if d.pid > 0 {
		s += fmt.Sprintf(" (pid %d, version %s)", d.pid, orDefault(d.version, "unknown"))
	}
	return s
}

// statAbsent asks the snapshotter at sock for a snapshot that does not
// exist, as containerd would, and expects "not found".
func statAbsent(ctx context.Context, sock, name string) error {
	conn, err := grpc.NewClient("passthrough:///"+sock,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}))
	if err != nil {
		return err
	}
	defer conn.Close()
	var b [8]byte
	_, _ = rand.Read(b[:])
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), name)
	_, err = sn.Stat(ctx, "lazypull-doctor-"+hex.EncodeToString(b[:]))
	if err == nil || errdefs.IsNotFound(err) {
		return nil
	}
	return err
}

// inspectPeer finds the process at the other end of conn and what it runs.
func inspectPeer(conn *net.UnixConn) daemonInfo {
	var d daemonInfo
	raw, err := conn.SyscallConn()
	if err != nil {
		return d
	}
	var cred *unix.Ucred
	_ = raw.Control(func(fd uintptr) {
		cred, _ = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if cred == nil || cred.Pid <= 0 {
		return d // in a PID namespace this process cannot see
	}
	d.pid = int(cred.Pid)
	proc := "/proc/" + strconv.Itoa(d.pid)
	if env, err := os.ReadFile(proc + "/environ"); err == nil {
		for _, kv := range bytes.Split(env, []byte{0}) {
			if len(kv) > 0 {
				d.env = append(d.env, string(kv))
			}
		}
	}
	if mine, err := os.Readlink("/proc/1/ns/user"); err == nil {
		if its, err := os.Readlink(proc + "/ns/user"); err == nil {
			d.userNS = mine != its
		}
	}
	d.version = binaryVersion(proc + "/exe")
	return d
}

var ldflagsVersion = regexp.MustCompile(`main\.version=([^\s'"]+)`)

// binaryVersion reads the version a Go binary was stamped with
// (-X main.version=...), or its VCS revision.
func binaryVersion(path string) string {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return ""
	}
	var rev string
	for _, s := range bi.Settings {
		switch s.Key {
		case "-ldflags":
			if m := ldflagsVersion.FindStringSubmatch(s.Value); m != nil {
				return m[1]
			}
		case "vcs.revision":
			rev = s.Value
		}
	}
	if rev != "" {
		return "dev (" + rev[:min(12, len(rev))] + ")"
	}
	return "dev"
}
