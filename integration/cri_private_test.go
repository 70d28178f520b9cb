package integration

import (
	"context"
	"encoding/base64"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"

	"github.com/lazypull/lazypull/integration/testbed"
	"github.com/lazypull/lazypull/integration/testimage"
	"github.com/lazypull/lazypull/snapshotter"
)

// TestCRIPrivateRegistry pulls an eStargz image from a registry that
// requires basic authentication, the way kubelet pulls with a pod's image
// pull secret: `crictl pull --creds`. Straight to containerd's CRI plugin,
// the credentials never reach lazypulld, and every layer falls back to a
// normal pull, with the reason on its snapshot. Through lazypulld's CRI
// image service ([cri], kubelet's --image-service-endpoint) the same pull,
// after the image was removed, is lazy (the daemon gives the credentials
// to the data plane that reads the layers), a pod's container reads the
// image's files right, and the password is in no log of lazypulld.
func TestCRIPrivateRegistry(t *testing.T) {
	forEachFlavour(t, func(t *testing.T, f testbed.Flavour) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		auth := &testbed.RegistryAuth{User: "puller", Password: fmt.Sprintf("secret-%d", time.Now().UnixNano())}
		creds := auth.User + ":" + auth.Password
		lb := newLazyBed(t, f, lazyBedOptions{CRI: true, CRIImageService: true, RegistryAuth: auth})
		pause := pushPauseImage(t, ctx, lb, auth)
		defaultImageOnce.Do(func() { defaultImage, defaultImageErr = loadDefaultImage() })
		if defaultImageErr != nil {
			t.Fatal(defaultImageErr)
		}
		img := defaultImage
		orig := lb.Registry.Ref("private/testimage:1")
		pushWithAuth(t, ctx, orig, img.img, auth)
		ref := convertImage(t, ctx, orig, lb.Registry.Ref("private/testimage:esgz"), dockerConfig(t, lb.Registry.Host, auth))

		direct := testbed.NewCrictl(t, lb.Containerd, "")
		proxied := testbed.NewCrictl(t, lb.Containerd, lb.Lazypulld.CRISocket)
		cl := lb.Containerd.Client(t)
		kctx := namespaces.WithNamespace(ctx, testbed.CRINamespace)

		// Without the image service: a normal pull, visibly.
		if _, err := direct.Run(ctx, "pull", "--creds", creds, ref); err != nil {
			t.Fatal(err)
		}
		pulled := inspectImage(t, kctx, cl, ref)
		for i, id := range pulled.ChainIDs {
			info, err := cl.SnapshotService(testbed.SnapshotterName).Stat(kctx, id.String())
			if err != nil {
				t.Fatal(err)
			}
			if info.Labels[snapshotter.LabelFallback] == "" || info.Labels[snapshotter.LabelRemote] != "" {
				t.Errorf("layer %d pulled without lazypulld having credentials: labels %v, want a fallback reason", i, info.Labels)
			} else {
				t.Logf("layer %d without the image service: fallback: %s", i, info.Labels[snapshotter.LabelFallback])
			}
		}
		if _, err := direct.Run(ctx, "rmi", ref); err != nil {
			t.Fatal(err)
		}
		waitSnapshotsGone(t, kctx, cl, pulled)

		// Through the image service: lazy.
		if _, err := proxied.Run(ctx, "pull", "--creds", creds, ref); err != nil {
			t.Fatal(err)
		}
		pulled = inspectImage(t, kctx, cl, ref)
		requireLazyLabels(t, kctx, cl, pulled)

		if _, err := proxied.Run(ctx, "pull", "--creds", creds, pause); err != nil {
			t.Fatal(err)
		}
		pod := runPod(t, ctx, lb, proxied, "private")
		out := pod.runToCompletion(t, ctx, "probe", ref, append([]string{"/" + testimage.EntrypointPath}, testimage.ProbeFiles...)...)
		requireOutput(t, out, probeOutput(t, img.expected, testimage.ProbeFiles...))

		// The password is in no log of lazypulld or its data planes, at
		// debug level.
		err := filepath.WalkDir(lb.Lazypulld.Dir, func(p string, d iofs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !(d.Name() == "log" || strings.HasSuffix(d.Name(), ".log")) {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if strings.Contains(string(b), auth.Password) {
				t.Errorf("log %s holds the registry password", p)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// dockerConfig writes a docker config.json with auth's credentials for
// host and returns the DOCKER_CONFIG setting that points at it, for
// `lazypull convert`.
func dockerConfig(t *testing.T, host string, auth *testbed.RegistryAuth) string {
	t.Helper()
	dir := t.TempDir()
	b64 := base64.StdEncoding.EncodeToString([]byte(auth.User + ":" + auth.Password))
	cfg := fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, host, b64)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return "DOCKER_CONFIG=" + dir
}

// waitSnapshotsGone waits until containerd's garbage collection has removed
// the layer snapshots of img, after its image was removed.
func waitSnapshotsGone(t *testing.T, ctx context.Context, cl *client.Client, img pulledImage) {
	t.Helper()
	ss := cl.SnapshotService(testbed.SnapshotterName)
	for _, id := range img.ChainIDs {
		for {
			_, err := ss.Stat(ctx, id.String())
			if errdefs.IsNotFound(err) {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("snapshot %s still there after its image was removed (stat: %v)", id, err)
			}
			time.Sleep(50 * time.Millisecond) // polling for the collection, not ordering goroutines
		}
	}
}
