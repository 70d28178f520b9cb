package cri

import (
	"context"
	"encoding/base64"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// upstream stands in for containerd's CRI image service: it answers pulls
// of images named "fail" with an error and records, for each pull, what
// the store held for the image's repository while the pull was in flight,
// which is when containerd mounts the layers. The real one is tested in
// integration/.
type upstream struct {
	runtime.UnimplementedImageServiceServer
	store *Store

	mu     sync.Mutex
	during []Auth
	images []string
}

func (u *upstream) PullImage(ctx context.Context, r *runtime.PullImageRequest) (*runtime.PullImageResponse, error) {
	host, repo, err := imageRepo(r.GetImage().GetImage())
	if err != nil {
		return nil, err
	}
	user, secret, _ := u.store.Credentials(host, repo)
	u.mu.Lock()
	u.during = append(u.during, Auth{User: user, Secret: secret})
	u.mu.Unlock()
	if repo == "team/fail" {
		return nil, status.Error(codes.Unauthenticated, "pull failed")
	}
	return &runtime.PullImageResponse{ImageRef: "sha256:0123"}, nil
}

func (u *upstream) RemoveImage(ctx context.Context, r *runtime.RemoveImageRequest) (*runtime.RemoveImageResponse, error) {
	u.mu.Lock()
	u.images = append(u.images, r.GetImage().GetImage())
	u.mu.Unlock()
	return &runtime.RemoveImageResponse{}, nil
}

// serve serves register on the unix socket sock until the test ends and
// returns a client connection to it.
func serve(t *testing.T, sock string, register func(*grpc.Server)) *grpc.ClientConn {
	t.Helper()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	register(s)
	go func() { _ = s.Serve(l) }()
	t.Cleanup(s.Stop)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestProxyKeepsCredentialsOfPulls(t *testing.T) {
	dir := t.TempDir()
	store := NewStore(time.Hour, 0)
	up := &upstream{store: store}
	upConn := serve(t, filepath.Join(dir, "containerd.sock"), func(s *grpc.Server) { runtime.RegisterImageServiceServer(s, up) })
	conn := serve(t, filepath.Join(dir, "proxy.sock"), NewProxy(upConn, store).Register)
	cl := runtime.NewImageServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pull := func(image string, auth *runtime.AuthConfig) error {
		_, err := cl.PullImage(ctx, &runtime.PullImageRequest{Image: &runtime.ImageSpec{Image: image}, Auth: auth})
		return err
	}

	alice := Auth{User: "alice", Secret: "pw"}
	if err := pull("registry.example:5000/team/app:1", &runtime.AuthConfig{Username: "alice", Password: "pw"}); err != nil {
		t.Fatal(err)
	}
	wantCreds(t, store, "registry.example:5000", "team/app", alice, true)

	// kubelet's "auth" form, and a short Docker Hub name.
	b64 := base64.StdEncoding.EncodeToString([]byte("bob:secret"))
	if err := pull("busybox", &runtime.AuthConfig{Auth: b64}); err != nil {
		t.Fatal(err)
	}
	wantCreds(t, store, "docker.io", "library/busybox", Auth{User: "bob", Secret: "secret"}, true)

	// Credentials for another server are not this registry's: containerd
	// does not use them either.
	if err := pull("registry.example:5000/team/other:1",
		&runtime.AuthConfig{Username: "eve", Password: "x", ServerAddress: "https://elsewhere.example"}); err != nil {
		t.Fatal(err)
	}
	wantCreds(t, store, "registry.example:5000", "team/other", Auth{}, false)

	// A failed pull keeps nothing.
	err := pull("registry.example:5000/team/fail:1", &runtime.AuthConfig{Username: "mallory", Password: "wrong"})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("failed pull: error %v, want the upstream's Unauthenticated", err)
	}
	wantCreds(t, store, "registry.example:5000", "team/fail", Auth{}, false)

	// Each pull saw its own credentials while in flight.
	up.mu.Lock()
	during := up.during
	up.mu.Unlock()
	want := []Auth{alice, {User: "bob", Secret: "secret"}, {}, {User: "mallory", Secret: "wrong"}}
	if len(during) != len(want) {
		t.Fatalf("upstream saw %d pulls, want %d", len(during), len(want))
	}
	for i := range want {
		if during[i] != want[i] {
			t.Errorf("pull %d: store held %+v during the pull, want %+v", i, during[i], want[i])
		}
	}

	// Other calls are forwarded as they are; methods the upstream lacks
	// say so.
	if _, err := cl.RemoveImage(ctx, &runtime.RemoveImageRequest{Image: &runtime.ImageSpec{Image: "x"}}); err != nil {
		t.Fatal(err)
	}
	up.mu.Lock()
	removed := up.images
	up.mu.Unlock()
	if len(removed) != 1 || removed[0] != "x" {
		t.Errorf("upstream removed %v, want [x]", removed)
	}
	if _, err := cl.ImageFsInfo(ctx, &runtime.ImageFsInfoRequest{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("ImageFsInfo of an upstream without it: %v, want Unimplemented", err)
	}
}
