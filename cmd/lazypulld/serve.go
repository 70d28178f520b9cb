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
	"github.com/lazypull/lazypull/fs"
)

// shutdownTimeout bounds how long a stopping daemon waits for calls in
// flight before cutting them off.
const shutdownTimeout = 10 * time.Second

// serve runs the daemon until ctx is cancelled, then shuts it down in order:
// stop accepting, finish calls in flight, close the snapshotter, remove the
// socket, release the root. It returns nil after a clean shutdown.
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

	sn, layers, closeSnapshotter, err := newSnapshotter(cfg)
	if err != nil {
		return fmt.Errorf("open snapshotter: %w", err)
	}
	defer func() {
		if err := closeSnapshotter(); err != nil {
			retErr = errors.Join(retErr, fmt.Errorf("close snapshotter: %w", err))
		}
	}()
	stopVerdicts := handleVerdicts(ctx, cfg, sn, layers)
	defer stopVerdicts()

	// The socket appears only once the snapshotter is ready, so whoever
	// waits for it can call at once.
	l, err := listen(ctx, cfg.Address)
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))

	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	logger.WithField("pid", os.Getpid()).Info("lazypulld serving")

	select {
	case err := <-served:
		// Serve only returns early on an accept error; its listener
		// is closed and the socket gone.
		srv.Stop()
		return fmt.Errorf("serve %s: %w", cfg.Address, err)
	case <-ctx.Done():
	}
	logger.Info("lazypulld stopping")
	stopServer(ctx, srv)
	// GracefulStop closed the listener, which removed the socket.
	if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		logger.WithError(err).Warn("serve")
	}
	logger.Info("lazypulld stopped")
	return nil
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

// handleVerdicts passes the layer filesystems' verification verdicts to the
// snapshotter and has containerd forget the snapshots of layers that
// failed, those of earlier runs included, until the returned function is
// called.
func handleVerdicts(ctx context.Context, cfg *config.Config, sn snapshots.Snapshotter, layers *fs.FileSystem) (stop func()) {
	sink, ok := sn.(verdictSink)
	if layers == nil || !ok {
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
	wg.Go(func() { watchVerifications(ctx, layers, sink, p) })
	return func() {
		cancel()
		wg.Wait()
	}
}
