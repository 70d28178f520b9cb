package testbed

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/lazypull/lazypull/contrib"
)

// LazypulldOptions configures StartLazypulld.
type LazypulldOptions struct {
	// Binary is the lazypulld executable.
	Binary string
	// Config is the content of its config.toml; empty means an empty file
	// (the defaults) so that no host configuration leaks in.
	Config string
	// LogLevel defaults to "debug".
	LogLevel string
	// CRIContainerdAddress, when set, turns lazypulld's CRI image service
	// on (its [cri] table, added to Config), forwarding to the containerd
	// socket at this path; Lazypulld.CRISocket is its socket.
	CRIContainerdAddress string
}

// Lazypulld is a running lazypulld with its own root, socket and log.
type Lazypulld struct {
	Dir        string
	Root       string
	Socket     string
	ConfigPath string
	LogPath    string
	// CRISocket is the socket of the CRI image service, if it is on.
	CRISocket string
	opts      LazypulldOptions
	proc      *process
}

// StartLazypulld starts lazypulld for t, waits until its socket answers
// snapshot API calls and stops it at cleanup (the test fails if it does not
// exit cleanly on SIGTERM). Then, also when the test failed, it stops the
// data planes the daemon started (`lazypulld --stop-data-planes`, and
// SIGKILL for any left), which unmounts their layers; their logs are printed
// first if the test failed.
func StartLazypulld(t T, opts LazypulldOptions) *Lazypulld {
	t.Helper()
	if err := checkBinary(opts.Binary); err != nil {
		t.Fatal(err)
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "debug"
	}
	dir := Dir(t, "lazypulld")
	l := &Lazypulld{
		Dir:        dir,
		Root:       filepath.Join(dir, "root"),
		Socket:     filepath.Join(dir, "lazypull.sock"),
		ConfigPath: filepath.Join(dir, "config.toml"),
		LogPath:    filepath.Join(dir, "lazypulld.log"),
		opts:       opts,
	}
	cfg := opts.Config
	if opts.CRIContainerdAddress != "" {
		l.CRISocket = filepath.Join(dir, "cri.sock")
		k8s, err := substitute("kubernetes/config.toml", contrib.KubernetesLazypull,
			contrib.DefaultCRISocket, l.CRISocket, contrib.DefaultContainerdSocket, opts.CRIContainerdAddress)
		if err != nil {
			t.Fatal(err)
		}
		cfg += "\n" + k8s
	}
	if err := writeFile(l.ConfigPath, cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if l.proc != nil && !l.proc.exited() {
			if err := l.proc.stop(15 * time.Second); err != nil {
				t.Errorf("stop lazypulld: %v", err)
			}
		}
		if t.Failed() {
			l.logDataPlanes(t)
		}
		if err := l.stopDataPlanes(); err != nil {
			t.Errorf("stop data planes: %v", err)
		}
	})
	if err := l.Start(t); err != nil {
		t.Fatal(err)
	}
	return l
}

// UseBinary makes the next Start run bin: an upgrade.
func (l *Lazypulld) UseBinary(bin string) { l.opts.Binary = bin }

// Start starts the daemon again after Stop or Kill, with the same root,
// socket and configuration; the log file is appended to.
func (l *Lazypulld) Start(t T) error {
	if l.proc != nil && !l.proc.exited() {
		return fmt.Errorf("lazypulld is already running")
	}
	// Registry credentials come only from what the test gives the daemon:
	// no docker config.json of the machine.
	env := append(os.Environ(), "DOCKER_CONFIG="+filepath.Join(l.Dir, "docker"))
	if _, ok := os.LookupEnv("GORACE"); !ok {
		// A -race binary otherwise sleeps a second before it exits.
		env = append(env, "GORACE=atexit_sleep_ms=0")
	}
	p, err := startProcess(t, "lazypulld", l.LogPath, env, l.opts.Binary,
		"--config", l.ConfigPath, "--root", l.Root, "--address", l.Socket, "--log-level", l.opts.LogLevel)
	if err != nil {
		return err
	}
	l.proc = p
	return waitFor(context.Background(), p, 30*time.Second, l.ping)
}

// Stop sends SIGTERM and waits for the daemon to exit; an error means it
// had to be killed or exited non-zero.
func (l *Lazypulld) Stop() error {
	if l.proc == nil || l.proc.exited() {
		return fmt.Errorf("lazypulld is not running")
	}
	return l.proc.stop(15 * time.Second)
}

// Kill kills the daemon with SIGKILL and waits for it to exit.
func (l *Lazypulld) Kill() error {
	if l.proc == nil || l.proc.exited() {
		return fmt.Errorf("lazypulld is not running")
	}
	if err := l.proc.cmd.Process.Kill(); err != nil {
		return err
	}
	_ = l.proc.waitErr()
	return nil
}

// PID is the process id of the daemon last started, or 0.
func (l *Lazypulld) PID() int {
	if l.proc == nil {
		return 0
	}
	return l.proc.cmd.Process.Pid
}

// Running reports whether the daemon process is alive.
func (l *Lazypulld) Running() bool { return l.proc != nil && !l.proc.exited() }

// ping succeeds once the socket serves the snapshots API: a Stat of a key
// that does not exist must come back as a gRPC status, not a dial error.
func (l *Lazypulld) ping(ctx context.Context) error {
	conn, err := grpc.NewClient("unix://"+l.Socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", l.Socket)
		}))
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = snapshotsapi.NewSnapshotsClient(conn).Stat(ctx, &snapshotsapi.StatSnapshotRequest{
		Snapshotter: SnapshotterName, Key: "testbed-ping-does-not-exist",
	})
	switch status.Code(err) {
	case codes.OK, codes.NotFound:
		return nil
	default:
		return err
	}
}
