package integration

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	docker "github.com/moby/moby/client"
	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/integration/testbed"
	"github.com/lazypull/lazypull/integration/testimage"
	"github.com/lazypull/lazypull/snapshotter"
)

// labelStoredBlob marks a layer blob that lazypulld stored in containerd's
// content store once the layer was verified (README, "Save, export and
// push").
const labelStoredBlob = "lazypull/layer-blob"

// TestLazyExport: once the layers of a lazily pulled image are verified,
// containerd's content store has their blobs, so that `ctr image export`
// writes an archive that holds every layer blob with its digest; the
// blobs survive containerd's garbage collection for as long as the image
// exists, and go with it. Layers verified before (whose blobs lazypulld
// does not read whole again) get their blobs too: the image removed and
// pulled again (fetched again from the registry), and the image pulled in
// a second namespace (copied from the first).
func TestLazyExport(t *testing.T) {
	forEachFlavour(t, func(t *testing.T, f testbed.Flavour) {
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		defer cancel()
		lb := newLazyBed(t, f, lazyBedOptions{})
		ref, _ := pushConverted(t, ctx, lb)
		pullLazily(t, ctx, lb, ref)
		cl := lb.Containerd.Client(t)
		nctx := namespaces.WithNamespace(ctx, lb.Containerd.Namespace)
		pulled := inspectImage(t, nctx, cl, ref)
		requireLazy(t, nctx, lb, cl, pulled)
		waitStoredBlobs(t, nctx, cl, pulled)

		collectGarbage(t, nctx, cl)
		requireExport(t, ctx, lb.Containerd, ref, pulled)

		if _, err := lb.Containerd.Ctr(ctx, "image", "rm", "--sync", ref); err != nil {
			t.Fatal(err)
		}
		for _, l := range pulled.Layers {
			if _, err := cl.ContentStore().Info(nctx, l.Digest); !errdefs.IsNotFound(err) {
				t.Errorf("layer blob %s after the image's removal: %v, want not found (nothing else references it)", l.Digest, err)
			}
		}

		pullLazily(t, ctx, lb, ref)
		waitBlobs(t, nctx, cl, pulled, "the image pulled again")
		requireExport(t, ctx, lb.Containerd, ref, pulled)

		second := lb.inNamespace(lb.Containerd.Namespace + "-second")
		pullLazily(t, ctx, second, ref)
		sctx := namespaces.WithNamespace(ctx, second.Containerd.Namespace)
		waitBlobs(t, sctx, cl, pulled, "the image pulled in a second namespace")
		requireExport(t, ctx, second.Containerd, ref, pulled)
	})
}

// requireExport fails t unless `ctr image export` of ref in c's namespace
// writes an archive with every layer blob of img.
func requireExport(t *testing.T, ctx context.Context, c *testbed.Containerd, ref string, img pulledImage) {
	t.Helper()
	archive := filepath.Join(testbed.Dir(t, "export"), "image.tar")
	if _, err := c.Ctr(ctx, "image", "export", archive, ref); err != nil {
		t.Fatal(err)
	}
	af, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer af.Close()
	requireArchiveLayers(t, af, img)
}

// waitBlobs waits until ctx's namespace of containerd's content store has
// every layer blob of img, stored by lazypulld.
func waitBlobs(t *testing.T, ctx context.Context, cl *client.Client, img pulledImage, what string) {
	t.Helper()
	started := time.Now()
	for i, l := range img.Layers {
		waitCondition(t, ctx, fmt.Sprintf("layer %d's blob in containerd, for %s", i, what), func() bool {
			info, err := cl.ContentStore().Info(ctx, l.Digest)
			return err == nil && info.Size == l.Size && info.Labels[labelStoredBlob] == "verified"
		})
	}
	t.Logf("layer blobs stored %v after the pull, for %s", time.Since(started).Round(time.Millisecond), what)
}

// TestDockerSaveAndPush: once the layers of an image Docker Engine pulled
// lazily are verified, `docker save` (the Engine API's images/get) writes
// an archive with every layer blob, and `docker push` to another registry
// succeeds; the pushed image, pulled back normally (containerd checks each
// blob's digest and each layer's DiffID), runs with the image's files.
func TestDockerSaveAndPush(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	f, err := testbed.Containerd2()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	lb := newLazyBed(t, f, lazyBedOptions{})
	ref, img := pushConverted(t, ctx, lb)
	dockerd := testbed.StartDockerd(t, lb.Containerd)
	dc, err := docker.New(docker.WithHost("unix://"+dockerd.Socket), docker.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	pull, err := dc.ImagePull(ctx, ref, docker.ImagePullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := pull.Wait(ctx); err != nil {
		t.Fatalf("docker pull %s: %v", ref, err)
	}
	cl := lb.Containerd.Client(t)
	mctx := namespaces.WithNamespace(ctx, testbed.DockerNamespace)
	pulled := inspectImage(t, mctx, cl, ref)
	requireLazy(t, mctx, lb, cl, pulled)
	waitStoredBlobs(t, mctx, cl, pulled)

	saved, err := dc.ImageSave(ctx, []string{ref})
	if err != nil {
		t.Fatal(err)
	}
	requireArchiveLayers(t, saved, pulled)
	saved.Close()

	second := testbed.StartRegistry(t)
	pushed := second.Ref("lazypull/pushed:1")
	if _, err := dc.ImageTag(ctx, docker.ImageTagOptions{Source: ref, Target: pushed}); err != nil {
		t.Fatal(err)
	}
	push, err := dc.ImagePush(ctx, pushed, docker.ImagePushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := push.Wait(ctx); err != nil {
		t.Fatalf("docker push %s: %v", pushed, err)
	}
	back := lb.Containerd.InNamespace("pulled-back")
	if err := back.Pull(ctx, "overlayfs", pushed); err != nil {
		t.Fatalf("pull the pushed image back: %v", err)
	}
	out, err := back.Run(ctx, "overlayfs", pushed, "pushed-probe", append([]string{"/" + testimage.EntrypointPath}, testimage.ProbeFiles...)...)
	if err != nil {
		t.Fatal(err)
	}
	requireOutput(t, out, probeOutput(t, img.expected, testimage.ProbeFiles...))
}

// waitStoredBlobs waits until every layer of img is verified, then
// requires its blob in ctx's namespace of containerd's content store,
// stored by lazypulld (a layer is reported verified once it is).
func waitStoredBlobs(t *testing.T, ctx context.Context, cl *client.Client, img pulledImage) {
	t.Helper()
	started := time.Now()
	ss := cl.SnapshotService(testbed.SnapshotterName)
	for i, id := range img.ChainIDs {
		waitCondition(t, ctx, fmt.Sprintf("layer %d to be verified", i), func() bool {
			info, err := ss.Stat(ctx, id.String())
			return err == nil && info.Labels[snapshotter.LabelVerification] == snapshotter.Verified
		})
	}
	t.Logf("layers verified %v after the pull", time.Since(started).Round(time.Millisecond))
	for i, l := range img.Layers {
		info, err := cl.ContentStore().Info(ctx, l.Digest)
		if err != nil {
			t.Errorf("layer %d (%s) verified, but containerd's content store lacks its blob: %v", i, l.Digest, err)
			continue
		}
		if info.Size != l.Size || info.Labels[labelStoredBlob] != "verified" {
			t.Errorf("layer %d (%s): content of %d bytes with labels %v, want %d bytes stored by lazypulld", i, l.Digest, info.Size, info.Labels, l.Size)
		}
	}
}

// collectGarbage has containerd collect garbage now, as the synchronous
// deletion of a lease does.
func collectGarbage(t *testing.T, ctx context.Context, cl *client.Client) {
	t.Helper()
	ls := cl.LeasesService()
	l, err := ls.Create(ctx, leases.WithRandomID(), leases.WithExpiration(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if err := ls.Delete(ctx, l, leases.SynchronousDelete); err != nil {
		t.Fatal(err)
	}
}

// requireArchiveLayers fails t unless the image archive (an OCI layout in
// a tar, as ctr export and docker save write) r holds every layer blob of
// img, with its digest and size.
func requireArchiveLayers(t *testing.T, r io.Reader, img pulledImage) {
	t.Helper()
	blobs, err := archiveBlobs(r)
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range img.Layers {
		size, ok := blobs[l.Digest]
		switch {
		case !ok:
			t.Errorf("layer %d (%s): not in the archive (its blobs: %d)", i, l.Digest, len(blobs))
		case size != l.Size:
			t.Errorf("layer %d (%s): %d bytes in the archive, want %d", i, l.Digest, size, l.Size)
		}
	}
}

// archiveBlobs reads the blobs/ of an image archive, checks that each
// hashes to its name and returns their sizes by digest.
func archiveBlobs(r io.Reader) (map[digest.Digest]int64, error) {
	blobs := map[digest.Digest]int64{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return blobs, nil
		}
		if err != nil {
			return nil, err
		}
		name, ok := strings.CutPrefix(h.Name, "blobs/sha256/")
		if !ok || h.Typeflag != tar.TypeReg {
			continue
		}
		hash := sha256.New()
		n, err := io.Copy(hash, tr)
		if err != nil {
			return nil, err
		}
		if got := hex.EncodeToString(hash.Sum(nil)); got != name {
			return nil, fmt.Errorf("archive entry %s hashes to sha256:%s", h.Name, got)
		}
		blobs[digest.NewDigestFromEncoded(digest.SHA256, name)] = n
	}
}
