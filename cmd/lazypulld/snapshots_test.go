package main

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// dialSnapshotter connects to the daemon the way containerd's proxy plugin
// does.
func dialSnapshotter(t *testing.T, address string) snapshots.Snapshotter {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "lazypull")
}

// The daemon serves the snapshotter over gRPC: a client sees the snapshots
// it makes, with their labels, parents and error classes.
func TestSnapshotsThroughDaemon(t *testing.T) {
	e := newEnv(t)
	d := start(t, e.args()...)
	d.waitServing(t, e.address)
	sn := dialSnapshotter(t, e.address)
	ctx := t.Context()

	mounts, err := sn.Prepare(ctx, "extract-1 layer1", "", snapshots.WithLabels(map[string]string{"test/layer": "1"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(mounts) != 1 {
		t.Fatalf("Prepare mounts = %+v, want one bind mount", mounts)
	}
	// The daemon runs on this machine: write the layer through the mount
	// source as an applier would through the mount.
	if err := os.WriteFile(filepath.Join(mounts[0].Source, "hello"), []byte("hi"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "layer1", "extract-1 layer1", snapshots.WithLabels(map[string]string{"test/layer": "1"})); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Prepare(ctx, "container", "layer1"); err != nil {
		t.Fatal(err)
	}

	info, err := sn.Stat(ctx, "layer1")
	if err != nil {
		t.Fatal(err)
	}
	if info.Kind != snapshots.KindCommitted || info.Labels["test/layer"] != "1" {
		t.Errorf("Stat(layer1) = %+v, want a committed snapshot labelled test/layer=1", info)
	}
	if info, err := sn.Stat(ctx, "container"); err != nil || info.Parent != "layer1" || info.Kind != snapshots.KindActive {
		t.Errorf("Stat(container) = %+v, %v; want an active snapshot with parent layer1", info, err)
	}
	if _, err := sn.Stat(ctx, "nope"); !errdefs.IsNotFound(err) {
		t.Errorf("Stat(nope) = %v, want a not-found error", err)
	}
	if err := sn.Commit(ctx, "layer1", "container"); !errdefs.IsAlreadyExists(err) {
		t.Errorf("Commit onto an existing name = %v, want an already-exists error", err)
	}

	var found []string
	err = sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		found = append(found, info.Name)
		return nil
	}, `labels."test/layer"==1`)
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 || found[0] != "layer1" {
		t.Errorf("Walk by label found %v, want [layer1]", found)
	}

	if code := d.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	// The metadata outlived the daemon.
	d2 := start(t, e.args()...)
	d2.waitServing(t, e.address)
	if info, err := dialSnapshotter(t, e.address).Stat(ctx, "layer1"); err != nil || info.Kind != snapshots.KindCommitted {
		t.Errorf("Stat(layer1) after a restart = %+v, %v", info, err)
	}
}
