package main

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/containerd/log"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/lazypull/lazypull/config"
	"github.com/lazypull/lazypull/cri"
	"github.com/lazypull/lazypull/remote"
)

// criMaxMessage bounds the messages of the CRI image service both ways,
// as kubelet and containerd bound theirs: a node's image list can be large.
const criMaxMessage = 16 << 20

// credentialSource is the registry client's view of the image service's
// credentials: none when the image service is off.
func credentialSource(s *cri.Store) remote.CredentialSource {
	if s == nil {
		return nil
	}
	return s
}

// criServer is the CRI image service ([cri]) that forwards to containerd
// and keeps pull credentials in the store the registry client reads.
type criServer struct {
	srv    *grpc.Server
	conn   *grpc.ClientConn
	served chan error
}

// startCRI claims the [cri] socket and serves the image service on it.
func startCRI(ctx context.Context, cfg config.CRI, store *cri.Store) (*criServer, error) {
	conn, err := grpc.NewClient("unix://"+cfg.ContainerdAddress,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(criMaxMessage), grpc.MaxCallSendMsgSize(criMaxMessage)),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", cfg.ContainerdAddress)
		}))
	if err != nil {
		return nil, fmt.Errorf("cri.containerd_address %s: %w", cfg.ContainerdAddress, err)
	}
	l, err := listen(ctx, cfg.Address)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("cri.address: %w", err)
	}
	s := &criServer{
		srv:    grpc.NewServer(grpc.MaxRecvMsgSize(criMaxMessage), grpc.MaxSendMsgSize(criMaxMessage)),
		conn:   conn,
		served: make(chan error, 1),
	}
	cri.NewProxy(conn, store).Register(s.srv)
	go func() { s.served <- s.srv.Serve(l) }()
	log.G(ctx).WithFields(log.Fields{"address": cfg.Address, "containerd": cfg.ContainerdAddress}).Info("serving the CRI image service")
	return s, nil
}

// failed delivers the error of a server that stopped serving on its own
// (an accept error); nil for no server, which never fails.
func (s *criServer) failed() <-chan error {
	if s == nil {
		return nil
	}
	return s.served
}

// stop lets calls in flight finish (bounded like the snapshots server's)
// and closes the connection to containerd. A nil server is a no-op.
func (s *criServer) stop(ctx context.Context) {
	if s == nil {
		return
	}
	stopServer(ctx, s.srv)
	select {
	case err := <-s.served:
		if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			log.G(ctx).WithError(err).Warn("serve the CRI image service")
		}
	default:
	}
	s.conn.Close()
}
