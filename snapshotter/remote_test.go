package snapshotter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/continuity/fs/fstest"
	"github.com/containerd/errdefs"
	"github.com/containerd/log/logtest"
	"golang.org/x/sys/unix"
)

// bindFS is a FileSystem test double that really mounts: it serves a layer
// by bind-mounting, read-only, the directory the test registered for the
// layer's digest.
type bindFS struct {
	mu     sync.Mutex
	dirs   map[string]string // layer digest -> directory
	mounts int               // successful Mount calls
	lost   map[string]bool   // mountpoints still mounted but no longer served
}

func newBindFS() *bindFS { return &bindFS{dirs: map[string]string{}, lost: map[string]bool{}} }

// lose makes the mount at mountpoint one that is no longer served, as a
// FUSE mount whose server died.
func (b *bindFS) lose(mountpoint string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lost[mountpoint] = true
}

func (b *bindFS) add(digest, dir string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.dirs[digest] = dir
}

func (b *bindFS) mountCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.mounts
}

func (b *bindFS) Mount(ctx context.Context, mountpoint string, labels map[string]string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	digest := labels[snapshotters.TargetLayerDigestLabel]
	dir, ok := b.dirs[digest]
	if !ok {
		return fmt.Errorf("layer %s is not eStargz", digest)
	}
	if err := unix.Mount(dir, mountpoint, "", unix.MS_BIND, ""); err != nil {
		return err
	}
	if err := unix.Mount("", mountpoint, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		unix.Unmount(mountpoint, 0)
		return err
	}
	b.mounts++
	delete(b.lost, mountpoint)
	return nil
}

func (b *bindFS) Check(ctx context.Context, mountpoint string, labels map[string]string) error {
	b.mu.Lock()
	lost := b.lost[mountpoint]
	b.mu.Unlock()
	if lost {
		return fmt.Errorf("%s is no longer served: %w", mountpoint, errdefs.ErrNotFound)
	}
	ok, err := isMountpoint(mountpoint)
	if err == nil && !ok {
		err = fmt.Errorf("%s is not mounted", mountpoint)
	}
	return err
}

func (b *bindFS) Unmount(ctx context.Context, mountpoint string) error {
	return unix.Unmount(mountpoint, 0)
}

// remoteEnv is a snapshotter root and a bindFS serving two layers, "/a"
// (digest sha256:aa, chainID chain-a) and "/b" above it (sha256:bb, chain-b).
type remoteEnv struct {
	root, layers string
	fs           *bindFS
}

func newRemoteEnv(t *testing.T) *remoteEnv {
	requiresRoot(t)
	dir := t.TempDir()
	e := &remoteEnv{root: filepath.Join(dir, "root"), layers: filepath.Join(dir, "layers"), fs: newBindFS()}
	for digest, applier := range map[string]fstest.Applier{
		"sha256:aa": fstest.Apply(fstest.CreateFile("/a", []byte("layer a\n"), 0o644)),
		"sha256:bb": fstest.Apply(fstest.CreateFile("/b", []byte("layer b\n"), 0o644)),
	} {
		d := filepath.Join(e.layers, strings.TrimPrefix(digest, "sha256:"))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := applier.Apply(d); err != nil {
			t.Fatal(err)
		}
		e.fs.add(digest, d)
	}
	// Whatever a test leaves mounted goes before t.TempDir is removed.
	t.Cleanup(func() {
		if err := mount.UnmountRecursive(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return e
}

func (e *remoteEnv) open(t *testing.T, opts ...Opt) snapshots.Snapshotter {
	t.Helper()
	sn, err := New(e.root, append([]Opt{WithFileSystem(e.fs)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn.Close() })
	return sn
}

func layerLabels(chainID, digest string) map[string]string {
	return map[string]string{
		snapshots.LabelSnapshotRef:          chainID,
		snapshotters.TargetRefLabel:         "registry.test/app:1",
		snapshotters.TargetLayerDigestLabel: digest,
	}
}

// unpackRemote makes the unpacker's Prepare of layer chainID on parent and
// requires the snapshotter to serve it remotely.
func unpackRemote(ctx context.Context, t *testing.T, sn snapshots.Snapshotter, chainID, parent, digest string) {
	t.Helper()
	key := fmt.Sprintf(snapshots.UnpackKeyFormat, "1234", chainID)
	_, err := sn.Prepare(ctx, key, parent, snapshots.WithLabels(layerLabels(chainID, digest)))
	if !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare of %s: got %v, want ErrAlreadyExists", chainID, err)
	}
}

// findRemote finds target the way containerd's metadata store does after
// ErrAlreadyExists.
func findRemote(ctx context.Context, t *testing.T, sn snapshots.Snapshotter, target, parent string) snapshots.Info {
	t.Helper()
	var found []snapshots.Info
	filter := fmt.Sprintf(`labels.%q==%s,parent==%q`, snapshots.LabelSnapshotRef, target, parent)
	if err := sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		found = append(found, info)
		return nil
	}, filter); err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 {
		t.Fatalf("Walk(%s) found %d snapshots, want 1: %+v", filter, len(found), found)
	}
	return found[0]
}

// checkMounted mounts m and requires the files of want in it.
func checkMounted(t *testing.T, m []mount.Mount, want ...fstest.Applier) {
	t.Helper()
	target, expected := t.TempDir(), t.TempDir()
	if err := mount.All(m, target); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := mount.UnmountAll(target, 0); err != nil {
			t.Error(err)
		}
	}()
	if err := fstest.Apply(want...).Apply(expected); err != nil {
		t.Fatal(err)
	}
	if err := fstest.CheckDirectoryEqual(expected, target); err != nil {
		t.Error(err)
	}
}

var (
	filesA = fstest.CreateFile("/a", []byte("layer a\n"), 0o644)
	filesB = fstest.CreateFile("/b", []byte("layer b\n"), 0o644)
)

func testContext(t *testing.T) context.Context {
	return namespaces.WithNamespace(logtest.WithT(context.Background(), t), "test")
}

func TestRemotePrepare(t *testing.T) {
	e := newRemoteEnv(t)
	ctx := testContext(t)
	sn := e.open(t)

	unpackRemote(ctx, t, sn, "chain-a", "", "sha256:aa")
	unpackRemote(ctx, t, sn, "chain-b", "chain-a", "sha256:bb")
	info := findRemote(ctx, t, sn, "chain-b", "chain-a")
	if info.Name != "chain-b" || info.Kind != snapshots.KindCommitted || info.Labels[LabelRemote] != "true" {
		t.Errorf("remote snapshot: %+v", info)
	}
	if info.Labels[snapshotters.TargetLayerDigestLabel] != "sha256:bb" {
		t.Errorf("Prepare labels not kept: %v", info.Labels)
	}
	findRemote(ctx, t, sn, "chain-a", "")

	// A second pull of the same layer finds it without mounting again.
	unpackRemote(ctx, t, sn, "chain-b", "chain-a", "sha256:bb")
	if n := e.fs.mountCount(); n != 2 {
		t.Errorf("%d mounts, want 2", n)
	}

	m, err := sn.Prepare(ctx, "container", "chain-b")
	if err != nil {
		t.Fatal(err)
	}
	// The lowerdirs are the layers' mountpoints, nearest first.
	lowers := strings.Split(lowerdirs(m), ":")
	if len(lowers) != 2 {
		t.Fatalf("lowerdirs %q, want 2", lowers)
	}
	mpB, mpA := lowers[0], lowers[1]
	requireMounted(t, mpB, true)
	requireMounted(t, mpA, true)
	if v := viewSource(ctx, t, sn, "chain-a"); v != mpA {
		t.Errorf("view of chain-a binds %s, want %s", v, mpA)
	}
	checkMounted(t, m, filesA, filesB)

	if err := sn.Remove(ctx, "container"); err != nil {
		t.Fatal(err)
	}
	if err := sn.Remove(ctx, "chain-b"); err != nil {
		t.Fatal(err)
	}
	requireMounted(t, mpB, false)
	if _, err := os.Stat(filepath.Dir(mpB)); !os.IsNotExist(err) {
		t.Errorf("snapshot directory of chain-b still there: %v", err)
	}
	requireMounted(t, mpA, true)
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	requireMounted(t, mpA, false)
}

// viewSource is the source of the bind mount of a view on the single
// layer name.
func viewSource(ctx context.Context, t *testing.T, sn snapshots.Snapshotter, name string) string {
	t.Helper()
	key := "view-" + name
	m, err := sn.View(ctx, key, name)
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Remove(ctx, key)
	if len(m) != 1 || m[0].Type != "bind" {
		t.Fatalf("view of %s: %+v", name, m)
	}
	return m[0].Source
}

func lowerdirs(m []mount.Mount) string {
	for _, mm := range m {
		for _, o := range mm.Options {
			if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
				return v
			}
		}
	}
	return ""
}

func requireMounted(t *testing.T, path string, want bool) {
	t.Helper()
	got, err := isMountpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("%s mounted: %v, want %v", path, got, want)
	}
}

// TestConcurrentPrepareSameLayer: two pulls of one layer at once (two
// namespaces, say) both end with ErrAlreadyExists and one mounted layer.
func TestConcurrentPrepareSameLayer(t *testing.T) {
	e := newRemoteEnv(t)
	ctx := testContext(t)
	sn := e.open(t)

	const pulls = 4
	errs := make(chan error, pulls)
	for i := range pulls {
		go func() {
			key := fmt.Sprintf(snapshots.UnpackKeyFormat, fmt.Sprint(i), "chain-a")
			_, err := sn.Prepare(ctx, key, "", snapshots.WithLabels(layerLabels("chain-a", "sha256:aa")))
			errs <- err
		}()
	}
	for range pulls {
		if err := <-errs; !errdefs.IsAlreadyExists(err) {
			t.Errorf("Prepare: got %v, want ErrAlreadyExists", err)
		}
	}
	var n int
	if err := sn.Walk(ctx, func(context.Context, snapshots.Info) error {
		n++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("%d snapshots after concurrent pulls, want 1", n)
	}
	if err := sn.(snapshots.Cleaner).Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(filepath.Join(e.root, "snapshots"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("%d snapshot directories, want 1", len(entries))
	}
	m, err := sn.View(ctx, "view", "chain-a")
	if err != nil {
		t.Fatal(err)
	}
	checkMounted(t, m, filesA)
}
