package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/moby/sys/mountinfo"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/integration/testbed"
	"github.com/lazypull/lazypull/integration/testimage"
	"github.com/lazypull/lazypull/snapshotter"
)

// lazyBed is a test bed whose lazypulld can reach the registry: its
// [remote] hosts_dir says the registry (and the front, if any) speaks plain
// HTTP. The same directory serves `lazypull pull --hosts-dir`.
type lazyBed struct {
	*testbed.Bed
	HostsDir string
	// Front is a counting, optionally corrupting proxy in front of the
	// registry; nil unless asked for.
	Front *testbed.Front
}

// lazyBedOptions configures newLazyBed.
type lazyBedOptions struct {
	// Front puts a testbed.Front before the registry.
	Front bool
	// NoBackgroundFetch turns off the background fetch of whole layers,
	// for tests that measure what the container's reads (with their
	// read-ahead) fetch.
	NoBackgroundFetch bool
	// FS holds more keys of lazypulld's [fs] table, one per line.
	FS string
	// CRI turns containerd's CRI plugin on, with criPauseImage in the
	// bed's registry as the pods' pause image (pushPauseImage pushes it).
	CRI bool
	// CRIImageService, with CRI, turns lazypulld's CRI image service on.
	CRIImageService bool
	// RegistryAuth makes the registry require these credentials.
	RegistryAuth *testbed.RegistryAuth
	// Remote holds more keys of lazypulld's [remote] table, one a line.
	Remote string
	// Tables holds more tables of lazypulld's configuration (not [remote]
	// nor, with NoBackgroundFetch, [fs]).
	Tables string
}

// newLazyBed starts a lazyBed for t. At the very end of t's cleanup it
// checks that no lazypull FUSE mount (and no mount at all) is left under
// the daemon's directory, whether t passed or failed.
func newLazyBed(t *testing.T, f testbed.Flavour, opts lazyBedOptions) *lazyBed {
	t.Helper()
	var daemonDir string
	t.Cleanup(func() { // registered first, so it runs after every teardown
		if daemonDir == "" {
			return
		}
		if ms, err := testbed.LazyMounts(daemonDir); err != nil || len(ms) > 0 {
			t.Errorf("lazypull FUSE mounts left after teardown under %s: %v (err %v)", daemonDir, mountPoints(ms), err)
		}
		if ms, err := testbed.MountsUnder(daemonDir); err != nil || len(ms) > 0 {
			t.Errorf("mounts left after teardown under %s: %v (err %v)", daemonDir, ms, err)
		}
	})
	hostsDir := testbed.Dir(t, "hosts")
	cfg := testbed.LazypulldRemoteConfig(hostsDir) + opts.Remote
	fsKeys := opts.FS
	if opts.NoBackgroundFetch {
		fsKeys += "background_fetch = false\n"
	}
	if fsKeys != "" {
		cfg += "\n[fs]\n" + fsKeys
	}
	cfg += "\n" + opts.Tables
	bopts := testbed.Options{
		Flavour:         f,
		LazypulldBinary: lazypulldBin,
		LazypulldConfig: cfg,
		HostsDir:        hostsDir,
		RegistryAuth:    opts.RegistryAuth,
	}
	if opts.CRI {
		bopts.CRIPauseImage = criPauseImage
		bopts.CRIImageService = opts.CRIImageService
	}
	bed := testbed.New(t, bopts)
	daemonDir = bed.Lazypulld.Dir
	lb := &lazyBed{Bed: bed, HostsDir: hostsDir}
	hosts := []string{bed.Registry.Host}
	if opts.Front {
		lb.Front = testbed.StartFront(t, bed.Registry.Host)
		hosts = append(hosts, lb.Front.Host)
	}
	for _, h := range hosts {
		if err := testbed.WritePlainHTTPHost(hostsDir, h); err != nil {
			t.Fatal(err)
		}
	}
	return lb
}

// convertImage runs `lazypull convert` from src to dst (both in the test
// registry) and returns dst. env is added to the tool's environment.
func convertImage(t *testing.T, ctx context.Context, src, dst string, env ...string) string {
	t.Helper()
	if stderr, err := lazypullConvert(ctx, src, dst, env...); err != nil {
		t.Fatalf("lazypull convert %s %s: %v\n%s", src, dst, err, stderr)
	}
	return dst
}

// lazypullConvert is convertImage for any goroutine: it returns the
// tool's stderr and an error if it failed.
func lazypullConvert(ctx context.Context, src, dst string, env ...string) (string, error) {
	cmd := exec.CommandContext(ctx, lazypullBin, "convert", "--plain-http", src, dst)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stderr.String(), err
	}
	if !strings.HasPrefix(stdout.String(), dst+"@sha256:") {
		return stderr.String(), fmt.Errorf("printed %q, want %s@<digest>", stdout.String(), dst)
	}
	return stderr.String(), nil
}

// pullStatus is one row of `lazypull pull`'s table.
type pullStatus struct {
	Layer, ChainID, Lazy, Verified, Reason string
}

// lazypullPull pulls ref into lazypull with `lazypull pull`, which adds
// the snapshot labels ctr of containerd 1.6 does not, and returns its
// per-layer table.
func lazypullPull(t *testing.T, ctx context.Context, lb *lazyBed, ref string) []pullStatus {
	t.Helper()
	rows, err := lazypullPullErr(ctx, lb, ref)
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

// lazypullPullErr is lazypullPull for a pull that may fail.
func lazypullPullErr(ctx context.Context, lb *lazyBed, ref string) ([]pullStatus, error) {
	ctrd := lb.Containerd
	cmd := exec.CommandContext(ctx, lazypullBin, "pull", "--address", ctrd.Address, "--namespace", ctrd.Namespace,
		"--snapshotter", testbed.SnapshotterName, "--hosts-dir", lb.HostsDir, ref)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("lazypull pull %s: %v\nstdout:\n%s\nstderr:\n%s", ref, err, stdout.String(), stderr.String())
	}
	var rows []pullStatus
	lines := strings.Split(strings.TrimRight(stdout.String(), "\n"), "\n")
	for _, line := range lines {
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "sha256:") {
			continue
		}
		rows = append(rows, pullStatus{Layer: f[0], ChainID: f[1], Lazy: f[2], Verified: f[3], Reason: strings.Join(f[4:], " ")})
	}
	if len(rows) == 0 {
		return nil, fmt.Errorf("lazypull pull printed no layer table:\n%s", stdout.String())
	}
	return rows, nil
}

// pullLazily pulls ref into lazypull the way a user of that containerd
// would: with `lazypull pull` on 1.6 (whose ctr adds no snapshot labels),
// with plain `ctr image pull` on 2.x (the transfer service adds them because
// the proxy plugin exports enable_remote_snapshot_annotations).
func pullLazily(t *testing.T, ctx context.Context, lb *lazyBed, ref string) {
	t.Helper()
	if lb.Containerd.Flavour.ConfigVersion < 3 {
		lazypullPull(t, ctx, lb, ref)
		return
	}
	if err := lb.Containerd.Pull(ctx, testbed.SnapshotterName, ref); err != nil {
		t.Fatal(err)
	}
}

// pulledImage is what containerd recorded of a pulled image.
type pulledImage struct {
	Layers   []ocispec.Descriptor
	ChainIDs []digest.Digest
}

// layerSize sums the compressed sizes of the layers.
func (p pulledImage) layerSize() int64 {
	var n int64
	for _, l := range p.Layers {
		n += l.Size
	}
	return n
}

// inspectImage reads ref's manifest and config from containerd.
func inspectImage(t *testing.T, ctx context.Context, cl *client.Client, ref string) pulledImage {
	t.Helper()
	img, err := cl.GetImage(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	man, err := images.Manifest(ctx, cl.ContentStore(), img.Target(), platforms.Default())
	if err != nil {
		t.Fatal(err)
	}
	diffIDs, err := img.RootFS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(diffIDs) != len(man.Layers) {
		t.Fatalf("%s: %d layers, %d diff IDs", ref, len(man.Layers), len(diffIDs))
	}
	return pulledImage{Layers: man.Layers, ChainIDs: identity.ChainIDs(diffIDs)}
}

// requireLazy fails t unless every layer of img is a remote snapshot of
// lazypull (see requireLazyLabels), mounted by its own FUSE filesystem under
// lazypulld's root, and was never downloaded into containerd's content store.
// (lazypulld stores a layer's blob there once the layer is verified, with
// the label labelStoredBlob.)
// The image is looked for in ctx's namespace, by default the bed's.
func requireLazy(t *testing.T, ctx context.Context, lb *lazyBed, cl *client.Client, img pulledImage) {
	t.Helper()
	if _, ok := namespaces.Namespace(ctx); !ok {
		ctx = namespaces.WithNamespace(ctx, lb.Containerd.Namespace)
	}
	requireLazyLabels(t, ctx, cl, img)
	ms, err := testbed.LazyMounts(lb.Lazypulld.Root)
	if err != nil {
		t.Fatal(err)
	}
	var sources []string
	for _, m := range ms {
		sources = append(sources, m.Source)
	}
	for i, l := range img.Layers {
		if n := count(sources, "lazypull:"+l.Digest.String()); n != 1 {
			t.Errorf("layer %d (%s): %d FUSE mounts under %s, want 1 (mounts: %v)", i, l.Digest, n, lb.Lazypulld.Root, mountPoints(ms))
		}
		info, err := cl.ContentStore().Info(ctx, l.Digest)
		if !errdefs.IsNotFound(err) && (err != nil || info.Labels[labelStoredBlob] != "verified") {
			t.Errorf("layer %d (%s): containerd's content store has the blob (err %v, labels %v): it was downloaded", i, l.Digest, err, info.Labels)
		}
	}
}

func count(list []string, s string) int {
	n := 0
	for _, x := range list {
		if x == s {
			n++
		}
	}
	return n
}

// probeOutput returns what hashfiles prints for paths in tree.
func probeOutput(t *testing.T, tree testimage.Tree, paths ...string) string {
	t.Helper()
	var b strings.Builder
	for _, p := range paths {
		n, err := tree.Lookup(p)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s  %s\n", n.Digest, p)
	}
	return b.String()
}

// runHashfiles runs ref with lazypull as container id, hashing paths.
func runHashfiles(ctx context.Context, lb *lazyBed, ref, id string, paths ...string) (string, error) {
	return lb.Containerd.Run(ctx, testbed.SnapshotterName, ref, id, append([]string{"/" + testimage.EntrypointPath}, paths...)...)
}

// requireOutput fails t unless got equals want, line by line.
func requireOutput(t *testing.T, got, want string) {
	t.Helper()
	if got != want {
		g := strings.Split(strings.TrimRight(got, "\n"), "\n")
		w := strings.Split(strings.TrimRight(want, "\n"), "\n")
		if !slices.Equal(g, w) {
			t.Errorf("container output differs from the image's files\ngot:\n%s\nwant:\n%s", got, want)
		}
	}
}

func mountPoints(ms []*mountinfo.Info) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Mountpoint+" ("+m.Source+")")
	}
	return out
}

// viewTree mounts a read-only view of snapshot parent of snapshotter sn and
// reads its tree. ctx must carry a namespace and a lease.
func viewTree(t *testing.T, ctx context.Context, cl *client.Client, sn, parent string) testimage.Tree {
	t.Helper()
	ss := cl.SnapshotService(sn)
	key := "view-" + sn + "-" + parent
	ms, err := ss.View(ctx, key, parent)
	if err != nil {
		t.Fatalf("%s: view %s: %v", sn, parent, err)
	}
	t.Cleanup(func() { // after the unmount, which is registered later
		if err := ss.Remove(context.WithoutCancel(ctx), key); err != nil {
			t.Errorf("%s: remove %s: %v", sn, key, err)
		}
	})
	tree, err := testimage.ReadTree(testbed.Mount(t, ms, true))
	if err != nil {
		t.Fatalf("%s: %v", sn, err)
	}
	return tree
}

// requireLazyLabels fails t unless the snapshot of every layer of img, as
// containerd reports it, is labelled remote by lazypull and has no fallback
// label. ctx must carry the namespace.
func requireLazyLabels(t *testing.T, ctx context.Context, cl *client.Client, img pulledImage) {
	t.Helper()
	ss := cl.SnapshotService(testbed.SnapshotterName)
	for i, id := range img.ChainIDs {
		info, err := ss.Stat(ctx, id.String())
		if err != nil {
			t.Errorf("layer %d: stat snapshot %s: %v", i, id, err)
			continue
		}
		if info.Labels[snapshotter.LabelRemote] != "true" || info.Labels[snapshotter.LabelFallback] != "" {
			t.Errorf("layer %d (%s): snapshot %s is not remote: labels %v", i, img.Layers[i].Digest, id, info.Labels)
		}
	}
}
