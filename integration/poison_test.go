package integration

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"

	"github.com/lazypull/lazypull/integration/testbed"
	"github.com/lazypull/lazypull/integration/testimage"
	"github.com/lazypull/lazypull/snapshotter"
)

// poisonImages are an eStargz image and one that copies its DiffIDs: its
// configuration has the genuine image's DiffIDs, its first layer other
// files (/who says "copying"), its second layer is the genuine one (the
// entrypoint). Both images have the same chain IDs.
type poisonImages struct {
	genuine, copying string        // references through the front
	copyLayer        digest.Digest // the copying image's first layer
	chainIDs         []digest.Digest
}

func pushPoisonImages(t *testing.T, ctx context.Context, lb *lazyBed) poisonImages {
	t.Helper()
	entry, err := os.ReadFile(entrypointBin)
	if err != nil {
		t.Fatal(err)
	}
	top := testimage.Layer{Entries: []testimage.Entry{testimage.File(testimage.EntrypointPath, 0o755, entry)}}
	build := func(tag, who string) v1.Image {
		layers := []testimage.Layer{{Entries: []testimage.Entry{
			testimage.File("who", 0o644, []byte(who)),
			// Larger than lazypulld's first read of a blob's tail, which
			// must not start at the blob's first byte.
			testimage.File("pad", 0o644, testimage.Pseudo(9, 2<<20)),
		}}, top}
		img, err := testimage.Image(layers, []string{"/" + testimage.EntrypointPath})
		if err != nil {
			t.Fatal(err)
		}
		src := lb.Registry.Ref("lazypull/poison-src:" + tag)
		if _, err := testimage.Push(ctx, src, img); err != nil {
			t.Fatal(err)
		}
		return remoteImage(t, ctx, convertImage(t, ctx, src, lb.Registry.Ref("lazypull/poison:"+tag)))
	}
	genuine, own := build("genuine", "genuine\n"), build("copying-own", "copying\n")
	gcfg, err := genuine.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := own.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.RootFS.DiffIDs = gcfg.RootFS.DiffIDs
	copying, err := mutate.ConfigFile(own, cfg)
	if err != nil {
		t.Fatal(err)
	}
	r, err := name.ParseReference(lb.Registry.Ref("lazypull/poison:copying"), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, copying, remote.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	gl, xl := layerDigests(t, genuine), layerDigests(t, copying)
	if gl[0] == xl[0] || gl[1] != xl[1] {
		t.Fatalf("layers genuine %v, copying %v: want the first to differ and the second to be the same", gl, xl)
	}
	var diffIDs []digest.Digest
	for _, d := range gcfg.RootFS.DiffIDs {
		diffIDs = append(diffIDs, digest.Digest(d.String()))
	}
	return poisonImages{
		genuine:   lb.Front.Ref("lazypull/poison:genuine"),
		copying:   lb.Front.Ref("lazypull/poison:copying"),
		copyLayer: xl[0],
		chainIDs:  identity.ChainIDs(diffIDs),
	}
}

// remoteImage reads image ref from the test registry.
func remoteImage(t *testing.T, ctx context.Context, ref string) v1.Image {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(r, remote.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func layerDigests(t *testing.T, img v1.Image) []digest.Digest {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	var ds []digest.Digest
	for _, l := range m.Layers {
		ds = append(ds, digest.Digest(l.Digest.String()))
	}
	return ds
}

// inNamespace returns lb speaking to its containerd in namespace ns.
func (lb *lazyBed) inNamespace(ns string) *lazyBed {
	b := *lb.Bed
	b.Containerd = lb.Containerd.InNamespace(ns)
	return &lazyBed{Bed: &b, HostsDir: lb.HostsDir, Front: lb.Front}
}

// TestChainIDPoisoning: an image whose configuration copies the DiffIDs of
// another image, with other files in a layer, is pulled lazily first; then
// the genuine image. In another namespace the genuine image gets its own
// files at once: the copying image's snapshot answers only pulls of the
// layer it was mounted from. In the same namespace containerd does not ask
// the snapshotter (the window, until the copying layer is verified); once
// the layer is local, verification fails it, its containers read I/O
// errors, lazypulld removes its snapshot from the namespaces where no
// container uses it, and a pull of the genuine image there gets the genuine
// files.
func TestChainIDPoisoning(t *testing.T) {
	forEachFlavour(t, func(t *testing.T, f testbed.Flavour) {
		ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
		defer cancel()
		lb := newLazyBed(t, f, lazyBedOptions{Front: true})
		im := pushPoisonImages(t, ctx, lb)
		nsA := lb.Containerd.Namespace
		b, c := lb.inNamespace(nsA+"-b"), lb.inNamespace(nsA+"-c")
		cl := lb.Containerd.Client(t)
		// Verification needs the layer's first bytes, which nothing else
		// reads (they hold tar headers): until released, it waits.
		release := lb.Front.HoldBlob(im.copyLayer)
		defer release()

		pullLazily(t, ctx, lb, im.copying)
		requireLazy(t, ctx, lb, cl, inspectImage(t, namespaces.WithNamespace(ctx, nsA), cl, im.copying))
		pullLazily(t, ctx, c, im.copying)
		if err := c.Containerd.RunDetached(ctx, testbed.SnapshotterName, im.copying, "copying", "/entry", "-wait"); err != nil {
			t.Fatal(err)
		}
		out, err := c.Containerd.Exec(ctx, "copying", "before", "/entry", "/who")
		requireWho(t, "the copying image before verification", out, err, "copying\n")

		pullLazily(t, ctx, b, im.genuine)
		out, err = runHashfiles(ctx, b, im.genuine, "genuine-b", "/who")
		requireWho(t, "the genuine image in another namespace", out, err, "genuine\n")
		info := statSnapshot(t, ctx, cl, b.Containerd.Namespace, im.chainIDs[0])
		if r := info.Labels[snapshotter.LabelFallback]; !strings.Contains(r, "not verified yet") {
			t.Errorf("genuine layer in another namespace: fallback reason %q, want the binding to the copying layer", r)
		}

		pullLazily(t, ctx, lb, im.genuine)
		out, err = runHashfiles(ctx, lb, im.genuine, "genuine-a-before", "/who")
		requireWho(t, "the genuine image in the same namespace before verification (the window)", out, err, "copying\n")
		if v := statSnapshot(t, ctx, cl, nsA, im.chainIDs[0]).Labels[snapshotter.LabelVerification]; v != "" {
			t.Fatalf("copying layer %s=%q while its verification is held back", snapshotter.LabelVerification, v)
		}

		waitCondition(t, ctx, "verification to ask for the copying layer's first bytes", func() bool { return lb.Front.Held(im.copyLayer) > 0 })
		released := time.Now()
		release()
		waitCondition(t, ctx, "the copying layer's verification to fail", func() bool {
			info, err := cl.SnapshotService(testbed.SnapshotterName).Stat(namespaces.WithNamespace(ctx, c.Containerd.Namespace), im.chainIDs[0].String())
			return err == nil && strings.HasPrefix(info.Labels[snapshotter.LabelVerification], snapshotter.FailedPrefix)
		})
		waitCondition(t, ctx, "the copying layer's snapshot to leave the namespace where no container uses it", func() bool {
			_, err := cl.SnapshotService(testbed.SnapshotterName).Stat(namespaces.WithNamespace(ctx, nsA), im.chainIDs[0].String())
			return errdefs.IsNotFound(err)
		})
		t.Logf("verified and removed %v after the release", time.Since(released).Round(time.Millisecond))

		out, err = c.Containerd.Exec(ctx, "copying", "after", "/entry", "/who")
		if err == nil || !strings.Contains(err.Error(), "input/output error") {
			t.Errorf("the copying image's container after verification: %v, output %q; want an I/O error", err, out)
		}
		// The genuine top layer is verified on its own, in parallel.
		waitCondition(t, ctx, "the copying image's top layer (the genuine one) to be verified", func() bool {
			info, err := cl.SnapshotService(testbed.SnapshotterName).Stat(namespaces.WithNamespace(ctx, c.Containerd.Namespace), im.chainIDs[1].String())
			return err == nil && info.Labels[snapshotter.LabelVerification] == snapshotter.Verified
		})
		rows := lazypullPull(t, ctx, c, im.copying)
		if len(rows) != 2 || rows[0].Verified != "failed" || !strings.Contains(rows[0].Reason, "DiffID") || rows[1].Verified != "yes" {
			t.Errorf("lazypull pull's report of the copying image: %+v, want its first layer failed, its second verified", rows)
		}

		pullLazily(t, ctx, lb, im.genuine)
		out, err = runHashfiles(ctx, lb, im.genuine, "genuine-a-after", "/who")
		requireWho(t, "the genuine image in the same namespace after verification", out, err, "genuine\n")
		if !lb.Lazypulld.Running() {
			t.Error("lazypulld exited")
		}
		requireVerdictAcrossRestarts(t, ctx, lb, c, cl, im)
	})
}

// requireVerdictAcrossRestarts: the copying layer failed verification and
// its snapshot stays in namespace c, where container "copying" uses it.
// lazypulld is killed and started again: the snapshot still says it
// failed, and the container still reads I/O errors (the data plane was
// adopted). lazypulld is stopped, the container removed meanwhile, and
// lazypulld started again: it removes the snapshot from c.
func requireVerdictAcrossRestarts(t *testing.T, ctx context.Context, lb, c *lazyBed, cl *client.Client, im poisonImages) {
	t.Helper()
	if err := lb.Lazypulld.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := lb.Lazypulld.Start(t); err != nil {
		t.Fatal(err)
	}
	nsCtx := namespaces.WithNamespace(ctx, c.Containerd.Namespace)
	var info snapshots.Info
	// containerd's connection to the snapshotter comes back after a
	// backoff of its own.
	waitCondition(t, ctx, "containerd to reach the restarted lazypulld", func() bool {
		var err error
		info, err = cl.SnapshotService(testbed.SnapshotterName).Stat(nsCtx, im.chainIDs[0].String())
		if err != nil && !errdefs.IsUnavailable(err) {
			t.Fatalf("stat snapshot %s after a restart of lazypulld: %v", im.chainIDs[0], err)
		}
		return err == nil
	})
	if v := info.Labels[snapshotter.LabelVerification]; !strings.HasPrefix(v, snapshotter.FailedPrefix) {
		t.Errorf("copying layer after a restart of lazypulld: %s=%q, want it failed", snapshotter.LabelVerification, v)
	}
	out, err := c.Containerd.Exec(ctx, "copying", "after-restart", "/entry", "/who")
	if err == nil || !strings.Contains(err.Error(), "input/output error") {
		t.Errorf("the copying image's container after a restart of lazypulld: %v, output %q; want an I/O error", err, out)
	}

	if err := lb.Lazypulld.Stop(); err != nil {
		t.Fatal(err)
	}
	ctr, err := cl.LoadContainer(nsCtx, "copying")
	if err != nil {
		t.Fatal(err)
	}
	task, err := ctr.Task(nsCtx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := task.Delete(nsCtx, client.WithProcessKill); err != nil {
		t.Fatal(err)
	}
	if err := ctr.Delete(nsCtx, client.WithSnapshotCleanup); err != nil {
		t.Fatal(err)
	}
	if err := lb.Lazypulld.Start(t); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, ctx, "the copying layer's snapshot to leave the namespace its container left while lazypulld was down", func() bool {
		_, err := cl.SnapshotService(testbed.SnapshotterName).Stat(nsCtx, im.chainIDs[0].String())
		return errdefs.IsNotFound(err)
	})
}

// TestChainIDPoisoningBeforeCommit: with [fs] verify = "before-commit" a
// layer is verified before containerd is told it exists, which closes the
// window: the copying image's layer is not mounted, containerd applies it
// itself and its pull fails on the DiffID; the genuine image, pulled in the
// same namespace afterwards, is lazy, verified at once, and has its files.
func TestChainIDPoisoningBeforeCommit(t *testing.T) {
	forEachFlavour(t, func(t *testing.T, f testbed.Flavour) {
		ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
		defer cancel()
		lb := newLazyBed(t, f, lazyBedOptions{Front: true, FS: `verify = "before-commit"`})
		im := pushPoisonImages(t, ctx, lb)
		cl := lb.Containerd.Client(t)
		nsCtx := namespaces.WithNamespace(ctx, lb.Containerd.Namespace)

		if rows, err := lazypullPullErr(ctx, lb, im.copying); err == nil || !strings.Contains(err.Error(), "wrong diff id") {
			t.Fatalf("pull of the copying image: %v, report %+v; want containerd to fail it on the DiffID", err, rows)
		}
		if _, err := cl.SnapshotService(testbed.SnapshotterName).Stat(nsCtx, im.chainIDs[0].String()); !errdefs.IsNotFound(err) {
			t.Fatalf("after the failed pull, the genuine image's first chain ID is there (err %v)", err)
		}

		rows := lazypullPull(t, ctx, lb, im.genuine)
		for _, r := range rows {
			if r.Lazy != "yes" || r.Verified != "yes" {
				t.Errorf("genuine image: layer %s lazy %s, verified %s, want both at the end of the pull", r.Layer, r.Lazy, r.Verified)
			}
		}
		out, err := runHashfiles(ctx, lb, im.genuine, "genuine", "/who")
		requireWho(t, "the genuine image", out, err, "genuine\n")
	})
}

// requireWho fails t unless a container of what printed /who's digest
// with content want.
func requireWho(t *testing.T, what, out string, err error, want string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if w := digest.FromString(want).Encoded() + "  /who\n"; out != w {
		t.Fatalf("%s read /who as %q, want the digest of %q", what, out, want)
	}
}

func statSnapshot(t *testing.T, ctx context.Context, cl *client.Client, ns string, chainID digest.Digest) snapshots.Info {
	t.Helper()
	info, err := cl.SnapshotService(testbed.SnapshotterName).Stat(namespaces.WithNamespace(ctx, ns), chainID.String())
	if err != nil {
		t.Fatalf("namespace %s: stat snapshot %s: %v", ns, chainID, err)
	}
	return info
}

// waitCondition waits, for at most two minutes, until cond holds.
func waitCondition(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("timed out waiting for %s", what)
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
		}
	}
}
