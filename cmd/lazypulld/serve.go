package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/log"
	"google.golang.org/grpc"

	"github.com/lazypull/lazypull/config"
	"github.com/lazypull/lazypull/cri"
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

	var creds *cri.Store
	if cfg.CRI.Address != "" {
		creds = cri.NewStore(cfg.CRI.CredentialTTL.Duration, cri.DefaultMaxEntries)
	}
	sn, closeSnapshotter, err := newSnapshotter(cfg, credentialSource(creds))
	if err != nil {
		return fmt.Errorf("open snapshotter: %w", err)
	}
	defer func() {
		if err := closeSnapshotter(); err != nil {
			retErr = errors.Join(retErr, fmt.Errorf("close snapshotter: %w", err))
		}
	}()

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

	var criSrv *criServer
	if creds != nil {
		if criSrv, err = startCRI(ctx, cfg.CRI, creds); err != nil {
			srv.Stop()
			<-served
			return err
		}
	}
	logger.WithField("pid", os.Getpid()).Info("lazypulld serving")

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
	logger.Info("lazypulld stopping")
	// Pulls through the image service need the snapshotter: stop them first.
	criSrv.stop(ctx)
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
