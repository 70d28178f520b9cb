package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/config"
	"github.com/lazypull/lazypull/cri"
	"github.com/lazypull/lazypull/dataplane"
)

// A data plane is lazypulld started by the daemon as
//
//	lazypulld data-plane <dir>
//
// in a session of its own: it serves the FUSE filesystems of lazily pulled
// layers, with the chunk cache and the registry client, and outlives the
// daemon that started it. <dir> (under <root>/dataplanes) holds what the
// daemon gave it and what it offers:
const (
	dataPlaneMode = "data-plane"
	// planeConfig is the daemon's configuration, as the daemon had it.
	planeConfig = "config.toml"
	// planeSocket is where the data plane serves the dataplane protocol,
	// with mode 0600.
	planeSocket = "sock"
	// planeLog gets the data plane's stderr when the daemon's is neither
	// the journal nor a file (see planeOutput).
	planeLog = "log"
	// readyFDEnv names the descriptor on which a starting data plane says
	// it serves: one line, then it closes it.
	readyFDEnv = "LAZYPULL_READY_FD"
)

// planeShutdownTimeout bounds how long a stopping data plane waits for the
// calls in flight.
const planeShutdownTimeout = 5 * time.Second

// runDataPlane is a data plane's whole life; it returns the exit status.
// SIGTERM or SIGINT stop it: it unmounts the layers it serves (those in
// use by containers cannot be, and their readers get errors once it has
// exited) and exits.
func runDataPlane(args []string, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintf(stderr, "usage: lazypulld %s <dir> (started by lazypulld, not by hand)\n", dataPlaneMode)
		return 2
	}
	dir := args[0]
	cfg, err := config.Load(filepath.Join(dir, planeConfig))
	if err != nil {
		fmt.Fprintf(stderr, "lazypulld data plane: %v\n", err)
		return 1
	}
	if err := setupLogging(cfg, stderr); err != nil {
		fmt.Fprintf(stderr, "lazypulld data plane: %v\n", err)
		return 1
	}
	warnRemoved(cfg)
	log.L = log.L.WithField("data_plane", filepath.Base(dir))
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := serveDataPlane(ctx, cfg, dir, readyFile()); err != nil {
		log.L.WithError(err).Error("data plane failed")
		fmt.Fprintf(stderr, "lazypulld data plane: %v\n", err)
		return 1
	}
	return 0
}

// readyFile returns the descriptor the daemon waits on, if it passed one.
func readyFile() *os.File {
	fd, err := strconv.Atoi(os.Getenv(readyFDEnv))
	if err != nil || fd < 3 {
		return nil
	}
	os.Unsetenv(readyFDEnv)
	return os.NewFile(uintptr(fd), "ready")
}

// serveDataPlane serves the layer filesystems on dir's socket until ctx
// ends or a Shutdown call asks it to stop, then unmounts what is left.
func serveDataPlane(ctx context.Context, cfg *config.Config, dir string, ready *os.File) (retErr error) {
	if ready != nil {
		defer ready.Close()
	}
	build, err := buildID()
	if err != nil {
		return fmt.Errorf("build id: %w", err)
	}
	// The credentials the daemon's CRI image service pushes ([cri]).
	var creds *cri.Store
	if cfg.CRI.Address != "" {
		creds = cri.NewStore(cfg.CRI.CredentialTTL.Duration, cri.DefaultMaxEntries)
	}
	metrics := newPlaneMetrics(cfg.Metrics.MaxHosts)
	resolver, err := newRegistryClient(cfg, credentialSource(creds), metrics)
	if err != nil {
		return err
	}
	prof, err := newProfiler(cfg, resolver, time.Now)
	if err != nil {
		return errors.Join(fmt.Errorf("start-up profiles: %w", err), resolver.Close())
	}
	layers, closeFS, err := newFileSystem(cfg, resolver, metrics, append(storeBlobOptions(ctx, cfg), prof.options()...)...)
	if err != nil {
		prof.Close()
		return err
	}
	defer func() {
		if err := closeFS(); err != nil {
			retErr = errors.Join(retErr, fmt.Errorf("unmount layers: %w", err))
		}
	}()
	// The profiles' lookups stop before the registry client is closed.
	defer prof.Close()
	l, err := listenPrivate(filepath.Join(dir, planeSocket))
	if err != nil {
		return err
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	info := dataplane.Info{Version: version, Build: build, PID: os.Getpid()}
	var fsys dataplane.FileSystem = verifyingFS{layers, prof}
	if creds != nil {
		fsys = credentialFS{verifyingFS{layers, prof}, creds}
	}
	srv := dataplane.NewServer(fsys, info, stop, dataplane.WithMetrics(metrics.handler()))
	defer keepBlobs(ctx, cfg, layers, srv.Mounts, credentialSource(creds))()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	if ready != nil {
		fmt.Fprintln(ready, "ready")
		ready.Close()
	}
	log.G(ctx).WithFields(log.Fields{"pid": info.PID, "version": version, "dir": dir}).Info("data plane serving")

	select {
	case err := <-served:
		return fmt.Errorf("serve %s: %w", dir, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), planeShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.G(ctx).WithError(err).Warn("data plane calls still in flight at exit")
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.G(ctx).WithError(err).Warn("serve")
	}
	log.G(ctx).WithField("mounts", len(srv.Mounts())).Info("data plane stopping")
	return nil
}

// listenPrivate listens on a new unix socket at path that only its owner
// may connect to.
func listenPrivate(path string) (*net.UnixListener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		if cerr := c.Control(func(fd uintptr) { err = unix.Fchmod(int(fd), 0o600) }); cerr != nil {
			return cerr
		}
		return err
	}}
	l, err := lc.Listen(context.Background(), "unix", path)
	if err != nil {
		return nil, err
	}
	return l.(*net.UnixListener), nil
}
