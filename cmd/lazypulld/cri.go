package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/lazypull/lazypull/config"
	"github.com/lazypull/lazypull/cri"
	"github.com/lazypull/lazypull/dataplane"
	"github.com/lazypull/lazypull/remote"
)

// The CRI image service ([cri]) runs in the daemon; the registry reads it
// keeps credentials for run in the data planes. The daemon keeps every
// pull's credentials in a cri.Store and pushes each change to the running
// data planes (/v1/credentials), and all of them to a data plane it starts;
// each data plane keeps them in a cri.Store of its own, which its registry
// client asks first. A data plane that outlives the daemon keeps them.

// criMaxMessage bounds the messages of the CRI image service both ways,
// as kubelet and containerd bound theirs: a node's image list can be large.
const criMaxMessage = 16 << 20

// credentialPushTimeout bounds a push of credentials to a data plane.
const credentialPushTimeout = 5 * time.Second

// credentialSource is the registry client's view of a store of
// credentials: none when the image service is off.
func credentialSource(s *cri.Store) remote.CredentialSource {
	if s == nil {
		return nil
	}
	return s
}

// credentialFS is a data plane's FileSystem that also takes the
// credentials the daemon pushes, into the store its registry client asks.
type credentialFS struct {
	verifyingFS
	store *cri.Store
}

var _ dataplane.CredentialKeeper = credentialFS{}

func (c credentialFS) SetCredentials(cr dataplane.Credentials) {
	c.store.Set(cr.Host, cr.Repo, cri.Auth{User: cr.User, Secret: cr.Secret}, cr.Expires)
}

// planeCredentials is the image service's Keeper in the daemon: its own
// store, mirrored to the data planes.
type planeCredentials struct {
	store  *cri.Store
	planes *planes
}

var _ cri.Keeper = (*planeCredentials)(nil)

// Keep keeps a and pushes it to the data planes before the pull goes on:
// the layers the pull mounts are read with it. The undo pushes what the
// store holds afterwards.
func (k *planeCredentials) Keep(ctx context.Context, host, repo string, a cri.Auth) func() {
	undo := k.store.Keep(ctx, host, repo, a)
	k.push(ctx, host, repo)
	return func() {
		undo()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), credentialPushTimeout)
		defer cancel()
		k.push(ctx, host, repo)
	}
}

// push sends what the store holds for the repository (or its removal) to
// every data plane, starting the current one if none runs.
func (k *planeCredentials) push(ctx context.Context, host, repo string) {
	c := dataplane.Credentials{Host: host, Repo: repo}
	if a, expires, ok := k.store.Entry(host, repo); ok {
		c.User, c.Secret, c.Expires = a.User, a.Secret, expires
	}
	if _, err := k.planes.ensureCurrent(ctx); err != nil {
		log.G(ctx).WithError(err).Warn("no data plane to give pull credentials to")
	}
	for _, cl := range k.planes.clients() {
		setCredentials(ctx, cl, c)
	}
}

// seed gives a data plane that was just started every credential the
// store holds.
func (k *planeCredentials) seed(ctx context.Context, cl *dataplane.Client) {
	var all []dataplane.Credentials
	k.store.Each(func(host, repo string, a cri.Auth, expires time.Time) {
		all = append(all, dataplane.Credentials{Host: host, Repo: repo, User: a.User, Secret: a.Secret, Expires: expires})
	})
	for _, c := range all {
		setCredentials(ctx, cl, c)
	}
}

func setCredentials(ctx context.Context, cl *dataplane.Client, c dataplane.Credentials) {
	ctx, cancel := context.WithTimeout(ctx, credentialPushTimeout)
	defer cancel()
	err := cl.SetCredentials(ctx, c)
	switch {
	case err == nil:
	case errdefs.IsNotImplemented(err):
		log.G(ctx).WithField("dataplane", cl.Socket()).Debug("data plane takes no credentials (another build or [cri] off there)")
	default:
		log.G(ctx).WithError(err).WithFields(log.Fields{"dataplane": cl.Socket(), "host": c.Host, "repository": c.Repo}).
			Warn("give pull credentials to a data plane")
	}
}

// criServer is the CRI image service ([cri]) that forwards to containerd
// and keeps pull credentials with its Keeper.
type criServer struct {
	srv    *grpc.Server
	conn   *grpc.ClientConn
	served chan error
}

// startCRI claims the [cri] socket and serves the image service on it.
func startCRI(ctx context.Context, cfg config.CRI, containerd string, keep cri.Keeper) (*criServer, error) {
	conn, err := grpc.NewClient("unix://"+containerd,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(criMaxMessage), grpc.MaxCallSendMsgSize(criMaxMessage)),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", containerd)
		}))
	if err != nil {
		return nil, fmt.Errorf("containerd.address %s: %w", containerd, err)
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
	cri.NewProxy(conn, keep).Register(s.srv)
	go func() { s.served <- s.srv.Serve(l) }()
	log.G(ctx).WithFields(log.Fields{"address": cfg.Address, "containerd": containerd}).Info("serving the CRI image service")
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
