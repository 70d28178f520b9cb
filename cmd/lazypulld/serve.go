package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/log"
	"google.golang.org/grpc"

	"github.com/lazypull/lazypull/config"
	"github.com/lazypull/lazypull/cri"
	"github.com/lazypull/lazypull/dataplane"
	"github.com/lazypull/lazypull/snapshotter"
)

// shutdownTimeout bounds how long a stopping daemon waits for calls in
// flight before cutting them off: a few seconds, so that a restart is
// quick; a Prepare cut off mounts nothing and containerd retries it.
const shutdownTimeout = 2 * time.Second

// serve runs the daemon until ctx is cancelled, then shuts it down in order:
// stop accepting, finish calls in flight, close the snapshotter, remove the
// socket, release the root. It leaves the data planes serving. It returns
// nil after a clean shutdown.
func serve(ctx context.Context, cfg *config.Config) (retErr error) {
	logger := log.G(ctx).WithFields(log.Fields{"root": cfg.Root, "address": cfg.Address})
	if err := os.MkdirAll(cfg.Root, 0o700); err != nil {
		return err
	}
	lock, err := lockRoot(cfg.Root)
	if err != nil {
		return err
	}
	defer func() {
		retErr = errors.Join(retErr, lock.release())
	}()

	// The socket is claimed before the data planes are started, so that
	// a daemon refused for a busy socket starts none; it is served once
	// the snapshotter is ready (a call that comes earlier waits).
	l, err := listen(ctx, cfg.Address)
	if err != nil {
		return err
	}
	metrics := newDaemonMetrics()
	sn, pl, closeSnapshotter, err := newSnapshotter(ctx, cfg, snapshotterOpts(cfg, metrics)...)
	if err != nil {
		l.Close()
		return fmt.Errorf("open snapshotter: %w", err)
	}
	defer func() {
		if err := closeSnapshotter(); err != nil {
			retErr = errors.Join(retErr, fmt.Errorf("close snapshotter: %w", err))
		}
	}()
	metricsSrv, err := startMetrics(ctx, cfg.Metrics, metrics, pl)
	if err != nil {
		l.Close()
		return err
	}
	defer metricsSrv.stop(ctx)
	stopVerdicts := handleVerdicts(ctx, cfg, sn, pl)
	defer stopVerdicts()

	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))

	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()

	var criSrv *criServer
	if cfg.CRI.Address != "" {
		if criSrv, err = startCRI(ctx, cfg.CRI, cfg.Containerd.Address, criKeeper(cfg, pl)); err != nil {
			srv.Stop()
			<-served
			return err
		}
	}
	logger.WithFields(log.Fields{"pid": os.Getpid(), "version": version}).Info("lazypulld serving")
	if err := sdNotify("READY=1"); err != nil {
		logger.WithError(err).Warn("notify the service manager")
	}

	select {
	case err := <-served:
		// Serve only returns early on an accept error; its listener
		// is closed and the socket gone.
		srv.Stop()
		criSrv.stop(ctx)
		return fmt.Errorf("serve %s: %w", cfg.Address, err)
	case err := <-criSrv.failed():
		srv.Stop()
		criSrv.stop(ctx)
		return err
	case <-ctx.Done():
	}
	logger.Info("lazypulld stopping; data planes keep serving")
	// Pulls through the image service need the snapshotter: stop them first.
	criSrv.stop(ctx)
	if err := sdNotify("STOPPING=1"); err != nil {
		logger.WithError(err).Warn("notify the service manager")
	}
	stopServer(ctx, srv)
	// GracefulStop closed the listener, which removed the socket.
	if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		logger.WithError(err).Warn("serve")
	}
	logger.Info("lazypulld stopped")
	return nil
}

// newSnapshotter is the snapshotter the daemon serves: its remote layers
// are mounted by the data planes (returned too, nil with [fs] disable),
// which keep them mounted when the daemon stops. The returned close
// function closes the snapshotter, then stops watching the data planes.
func newSnapshotter(ctx context.Context, cfg *config.Config, opts ...snapshotter.Opt) (snapshots.Snapshotter, *planes, func() error, error) {
	if cfg.FS.Disable {
		sn, err := snapshotter.New(cfg.Root, opts...)
		if err != nil {
			return nil, nil, nil, err
		}
		return sn, nil, sn.Close, nil
	}
	pl, err := newPlanes(ctx, cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	sn, err := snapshotter.New(cfg.Root, append(opts, snapshotter.WithFileSystem(pl), snapshotter.WithKeepMountsOnClose())...)
	if err != nil {
		return nil, nil, nil, errors.Join(err, pl.Close())
	}
	pl.setOnLost(sn.(snapshotter.Remounter).Remount)
	return sn, pl, func() error { return errors.Join(sn.Close(), pl.Close()) }, nil
}

// criKeeper is where the CRI image service keeps pull credentials: a store
// mirrored to the data planes (pl; nil when lazy pulling is off, and no
// registry is read).
func criKeeper(cfg *config.Config, pl *planes) cri.Keeper {
	store := cri.NewStore(cfg.CRI.CredentialTTL.Duration, cri.DefaultMaxEntries)
	if pl == nil {
		return store
	}
	k := &planeCredentials{store: store, planes: pl}
	pl.setSeed(k.seed)
	return k
}

// stopServer stops accepting and lets calls in flight finish, for at most
// shutdownTimeout; then it cancels what is left.
func stopServer(ctx context.Context, srv *grpc.Server) {
	done := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(done)
	}()
	t := time.NewTimer(shutdownTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		log.G(ctx).WithField("timeout", shutdownTimeout).Warn("calls still in flight; cancelling them")
		srv.Stop()
		<-done
	}
}

// handleVerdicts passes the verification verdicts of every data plane's
// layers to the snapshotter and has containerd forget the snapshots of
// layers that failed, those of earlier runs included, until the returned
// function is called.
func handleVerdicts(ctx context.Context, cfg *config.Config, sn snapshots.Snapshotter, pl *planes) (stop func()) {
	sink, ok := sn.(verdictSink)
	if pl == nil || !ok {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var p *purger
	if cfg.Containerd.Address != "" {
		p = newPurger(cfg.Containerd.Address, cfg.Containerd.Snapshotter)
		names, err := failedSnapshots(ctx, sn)
		if err != nil {
			log.G(ctx).WithError(err).Warn("cannot list snapshots that failed verification")
		}
		for _, name := range names {
			p.add(name)
		}
		wg.Go(func() { p.run(ctx) })
	}
	pl.setOnMounted(func(ctx context.Context, v dataplane.Verification) {
		tell(ctx, []dataplane.Verification{v}, map[string]string{}, sink, p)
	})
	stopWatching := pl.watchEach(ctx, func(ctx context.Context, d *plane) {
		watchVerifications(ctx, d.client, sink, p)
	})
	return func() {
		pl.setOnMounted(nil)
		stopWatching()
		cancel()
		wg.Wait()
	}
}
