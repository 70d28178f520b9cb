package snapshotter

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// requiresRoot skips tests that mount. containerd's testsuite does not call
// testutil.RequiresRoot (whose -test.root flag would otherwise be needed),
// so running as root is all it takes.
func requiresRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounts need root")
	}
}

// suiteName is "overlayfs" because the suite skips the directory renames
// overlayfs without redirect_dir cannot do, and our snapshots are overlayfs.
const suiteName = "overlayfs"

func TestSnapshotterSuite(t *testing.T) {
	requiresRoot(t)
	testsuite.SnapshotterSuite(t, suiteName, func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		sn, err := New(root)
		if err != nil {
			return nil, nil, err
		}
		return sn, sn.Close, nil
	})
}

// TestSnapshotterSuiteGRPC runs the suite the way containerd talks to
// lazypulld: containerd's proxy client, the snapshots gRPC API on a unix
// socket, and containerd's snapshot service in front of the snapshotter.
func TestSnapshotterSuiteGRPC(t *testing.T) {
	requiresRoot(t)
	testsuite.SnapshotterSuite(t, suiteName, func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		sn, err := New(root)
		if err != nil {
			return nil, nil, err
		}
		client, stop, err := serveGRPC(filepath.Join(filepath.Dir(root), "snapshots.sock"), sn)
		if err != nil {
			sn.Close()
			return nil, nil, err
		}
		return client, func() error {
			stop()
			return sn.Close()
		}, nil
	})
}

// serveGRPC serves sn on a unix socket at path and returns a client of it
// and a function that closes client and server.
func serveGRPC(path string, sn snapshots.Snapshotter) (snapshots.Snapshotter, func(), error) {
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, nil, err
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(l)
	}()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		srv.Stop()
		<-done
		return nil, nil, err
	}
	stop := func() {
		conn.Close()
		srv.Stop()
		<-done
	}
	return proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "lazypull"), stop, nil
}

// containerd and `lazypull` walk a snapshotter that may hold no snapshot yet:
// that is an empty walk, not an error.
func TestWalkEmptyStore(t *testing.T) {
	sn, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	n := 0
	if err := sn.Walk(context.Background(), func(context.Context, snapshots.Info) error { n++; return nil },
		`labels."containerd.io/snapshot.ref"==x`); err != nil {
		t.Fatalf("Walk on an empty store: %v", err)
	}
	if n != 0 {
		t.Fatalf("Walk on an empty store found %d snapshots", n)
	}
}
