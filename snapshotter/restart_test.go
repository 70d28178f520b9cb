package snapshotter

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/metadata"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/continuity/fs/fstest"
	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
)

// pullTwoLayers serves chain-a and chain-b remotely, prepares "container"
// on them and returns the layers' mountpoints, nearest first.
func pullTwoLayers(ctx context.Context, t *testing.T, sn snapshots.Snapshotter) []string {
	t.Helper()
	unpackRemote(ctx, t, sn, "chain-a", "", "sha256:aa")
	unpackRemote(ctx, t, sn, "chain-b", "chain-a", "sha256:bb")
	m, err := sn.Prepare(ctx, "container", "chain-b")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(lowerdirs(m), ":")
}

func TestRestartRemounts(t *testing.T) {
	e := newRemoteEnv(t)
	ctx := testContext(t)
	sn := e.open(t)
	mps := pullTwoLayers(ctx, t, sn)
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	for _, mp := range mps {
		requireMounted(t, mp, false)
	}

	sn = e.open(t)
	m, err := sn.Mounts(ctx, "container")
	if err != nil {
		t.Fatal(err)
	}
	for _, mp := range mps {
		requireMounted(t, mp, true)
	}
	checkMounted(t, m, filesA, filesB)
	if n := e.fs.mountCount(); n != 4 {
		t.Errorf("%d mounts, want 4", n)
	}
}

func TestRestartKeepsLiveMounts(t *testing.T) {
	e := newRemoteEnv(t)
	ctx := testContext(t)
	sn := e.open(t, WithKeepMountsOnClose())
	mps := pullTwoLayers(ctx, t, sn)
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	for _, mp := range mps {
		requireMounted(t, mp, true)
	}
	// The lower layer's mount died with the old daemon.
	if err := mount.UnmountAll(mps[1], 0); err != nil {
		t.Fatal(err)
	}

	sn = e.open(t)
	m, err := sn.Mounts(ctx, "container")
	if err != nil {
		t.Fatal(err)
	}
	checkMounted(t, m, filesA, filesB)
	if n := e.fs.mountCount(); n != 3 {
		t.Errorf("%d mounts, want 3 (only the dead layer re-mounted)", n)
	}
}

// A layer whose server died while the snapshotter runs is mounted again
// when its owner says so: the snapshots above it work again, and its
// snapshot says what happened.
func TestRemountLostLayer(t *testing.T) {
	e := newRemoteEnv(t)
	ctx := testContext(t)
	sn := e.open(t)
	mps := pullTwoLayers(ctx, t, sn) // chain-b's first
	e.fs.lose(mps[0])
	sn.(Remounter).Remount([]string{mps[0], "/not/a/layer"}, "test server died")

	m, err := sn.Mounts(ctx, "container")
	if err != nil {
		t.Fatal(err)
	}
	checkMounted(t, m, filesA, filesB)
	if n := e.fs.mountCount(); n != 3 {
		t.Errorf("%d mounts, want 3 (the lost layer mounted again)", n)
	}
	if err := e.fs.Check(ctx, mps[0], nil); err != nil {
		t.Errorf("lost layer not served again: %v", err)
	}
	info, err := sn.Stat(ctx, "chain-b")
	if err != nil {
		t.Fatal(err)
	}
	if v := info.Labels[LabelRemounted]; !strings.HasSuffix(v, ": test server died") {
		t.Errorf("chain-b's %s label = %q, want a time and the reason", LabelRemounted, v)
	}
	if info, err := sn.Stat(ctx, "chain-a"); err != nil || info.Labels[LabelRemounted] != "" {
		t.Errorf("chain-a, which was not lost: %v, %v", info.Labels, err)
	}
	// A snapshot removed meanwhile is not mounted again.
	for _, key := range []string{"container", "chain-b"} {
		if err := sn.Remove(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	sn.(Remounter).Remount([]string{mps[0]}, "again")
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	if n := e.fs.mountCount(); n != 3 {
		t.Errorf("%d mounts after a Remount of a removed layer, want 3", n)
	}
}

func TestRestartMountFails(t *testing.T) {
	e := newRemoteEnv(t)
	ctx := testContext(t)
	sn := e.open(t)
	pullTwoLayers(ctx, t, sn)
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}

	// After the restart, layer bb can no longer be served.
	e.fs = newBindFS()
	e.fs.add("sha256:aa", filepath.Join(e.layers, "aa"))
	sn = e.open(t, WithRestoreConcurrency(1))
	_, err := sn.Mounts(ctx, "container")
	if !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "sha256:bb") {
		t.Fatalf("Mounts: got %v, want ErrUnavailable naming sha256:bb", err)
	}
	if _, err := sn.Prepare(ctx, "container-2", "chain-b"); !errdefs.IsUnavailable(err) {
		t.Fatalf("Prepare on chain-b: got %v, want ErrUnavailable", err)
	}
	if _, err := sn.Stat(ctx, "container-2"); !errdefs.IsNotFound(err) {
		t.Errorf("failed Prepare left its snapshot: %v", err)
	}
	m, err := sn.View(ctx, "view-a", "chain-a")
	if err != nil {
		t.Fatal(err)
	}
	checkMounted(t, m, filesA)
	// Removing the broken layer works.
	for _, key := range []string{"container", "chain-b"} {
		if err := sn.Remove(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRestartWithoutFileSystem(t *testing.T) {
	e := newRemoteEnv(t)
	ctx := testContext(t)
	sn := e.open(t)
	pullTwoLayers(ctx, t, sn)
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	sn, err := New(e.root)
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	if _, err := sn.Mounts(ctx, "container"); !errdefs.IsUnavailable(err) {
		t.Fatalf("Mounts: got %v, want ErrUnavailable", err)
	}
}

// TestContainerdMetadata runs the protocol through containerd's metadata
// store, the layer between containerd's unpacker and a snapshotter: it must
// find remote snapshots, keep their parents, and show our labels.
func TestContainerdMetadata(t *testing.T) {
	e := newRemoteEnv(t)
	ctx := testContext(t)
	sn := e.open(t)
	dir := t.TempDir()
	bdb, err := bolt.Open(filepath.Join(dir, "meta.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	cs, err := local.NewStore(filepath.Join(dir, "content"))
	if err != nil {
		t.Fatal(err)
	}
	db := metadata.NewDB(bdb, cs, map[string]snapshots.Snapshotter{"lazypull": sn})
	if err := db.Init(ctx); err != nil {
		t.Fatal(err)
	}
	msn := db.Snapshotter("lazypull")

	unpackRemote(ctx, t, msn, "chain-a", "", "sha256:aa")
	unpackRemote(ctx, t, msn, "chain-b", "chain-a", "sha256:bb")
	info, err := msn.Stat(ctx, "chain-b")
	if err != nil {
		t.Fatal(err)
	}
	if info.Parent != "chain-a" || info.Labels[LabelRemote] != "true" {
		t.Errorf("chain-b through containerd: %+v", info)
	}

	key := fmt.Sprintf(snapshots.UnpackKeyFormat, "5678", "chain-x")
	labels := layerLabels("chain-x", "sha256:xx")
	m, err := msn.Prepare(ctx, key, "chain-b", snapshots.WithLabels(labels))
	if err != nil {
		t.Fatalf("Prepare of a layer that falls back: %v", err)
	}
	filesX := fstest.CreateFile("/x", []byte("applied by containerd\n"), 0o644)
	target := t.TempDir()
	if err := mount.All(m, target); err != nil {
		t.Fatal(err)
	}
	err = fstest.Apply(filesX).Apply(target)
	if uerr := mount.UnmountAll(target, 0); uerr != nil {
		t.Fatal(uerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := msn.Commit(ctx, "chain-x", key, snapshots.WithLabels(labels)); err != nil {
		t.Fatal(err)
	}
	info, err = msn.Stat(ctx, "chain-x")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(info.Labels[LabelFallback], "not eStargz") {
		t.Errorf("chain-x through containerd has no fallback reason: %v", info.Labels)
	}

	m, err = msn.Prepare(ctx, "container", "chain-x")
	if err != nil {
		t.Fatal(err)
	}
	checkMounted(t, m, filesA, filesB, filesX)
}
