package integration

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lazypull/lazypull/integration/testbed"
	"github.com/lazypull/lazypull/integration/testimage"
	"github.com/lazypull/lazypull/snapshotter"
)

// TestLazyFallback pulls an image whose lowest layer is plain gzip and whose
// upper layers are eStargz (the test image's, from `lazypull convert`). The
// lower layer must fall back to a normal pull, visibly: its snapshot carries
// the fallback label with a reason and `lazypull pull` reports it as not
// lazy, with that reason. The eStargz layers above it are still mounted
// lazily, and the container reads every probed file right.
func TestLazyFallback(t *testing.T) {
	forEachFlavour(t, func(t *testing.T, f testbed.Flavour) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		lb := newLazyBed(t, f, lazyBedOptions{})
		orig, img := pushDefaultImage(t, ctx, lb.Registry)
		converted := convertImage(t, ctx, orig, lb.Registry.Ref("lazypull/testimage:esgz"))
		ref := lb.Registry.Ref("lazypull/mixed:1")
		pushMixedImage(t, ctx, orig, converted, ref)

		rows := lazypullPull(t, ctx, lb, ref)
		for _, r := range rows {
			t.Logf("lazypull pull: %s lazy=%s %s", r.Layer, r.Lazy, r.Reason)
		}
		if len(rows) != len(img.layers) {
			t.Fatalf("lazypull pull printed %d layers, want %d: %+v", len(rows), len(img.layers), rows)
		}
		if rows[0].Lazy != "no" || !strings.HasPrefix(rows[0].Reason, "fallback: ") || len(rows[0].Reason) <= len("fallback: ") {
			t.Errorf("lazypull pull: gzip layer %s: lazy %q, reason %q; want not lazy with a fallback reason",
				rows[0].Layer, rows[0].Lazy, rows[0].Reason)
		}
		for _, r := range rows[1:] {
			if r.Lazy != "yes" {
				t.Errorf("lazypull pull: eStargz layer %s above the fallback is not lazy: %s", r.Layer, r.Reason)
			}
		}

		cl := lb.Containerd.Client(t)
		nctx := namespaces.WithNamespace(ctx, lb.Containerd.Namespace)
		pulled := inspectImage(t, nctx, cl, ref)
		info, err := cl.SnapshotService(testbed.SnapshotterName).Stat(nctx, pulled.ChainIDs[0].String())
		if err != nil {
			t.Fatal(err)
		}
		if reason := info.Labels[snapshotter.LabelFallback]; reason == "" || info.Labels[snapshotter.LabelRemote] != "" {
			t.Errorf("gzip layer's snapshot %s: labels %v; want %s with a reason and no %s",
				pulled.ChainIDs[0], info.Labels, snapshotter.LabelFallback, snapshotter.LabelRemote)
		} else if !strings.HasPrefix(rows[0].Reason, "fallback: "+reason[:min(len(reason), 40)]) {
			t.Errorf("lazypull pull's reason %q is not the snapshot's label %q", rows[0].Reason, reason)
		}
		upper := pulledImage{Layers: pulled.Layers[1:], ChainIDs: pulled.ChainIDs[1:]}
		requireLazyLabels(t, nctx, cl, upper)

		out, err := runHashfiles(ctx, lb, ref, "fallback-probe", testimage.ProbeFiles...)
		if err != nil {
			t.Fatal(err)
		}
		requireOutput(t, out, probeOutput(t, img.expected, testimage.ProbeFiles...))
	})
}

// pushMixedImage pushes to dst the image made of orig's first (gzip) layer
// and converted's other (eStargz) layers, with their annotations, and
// converted's entrypoint.
func pushMixedImage(t *testing.T, ctx context.Context, orig, converted, dst string) {
	t.Helper()
	o, c := remoteImage(t, ctx, orig), remoteImage(t, ctx, converted)
	ol, err := o.Layers()
	if err != nil {
		t.Fatal(err)
	}
	cl, err := c.Layers()
	if err != nil {
		t.Fatal(err)
	}
	cm, err := c.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	adds := []mutate.Addendum{{Layer: ol[0], MediaType: types.OCILayer}}
	for i := 1; i < len(cl); i++ {
		if cm.Layers[i].Annotations[estargz.TOCJSONDigestAnnotation] == "" {
			t.Fatalf("converted layer %d has no TOC digest annotation", i)
		}
		adds = append(adds, mutate.Addendum{Layer: cl[i], MediaType: types.OCILayer, Annotations: cm.Layers[i].Annotations})
	}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err = mutate.Append(img, adds...)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", runtime.GOARCH
	cfg.Config.Entrypoint = []string{"/" + testimage.EntrypointPath}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := testimage.Push(ctx, dst, img); err != nil {
		t.Fatal(err)
	}
}
