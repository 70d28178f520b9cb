package integration

import (
	"context"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/lazypull/lazypull/integration/testbed"
	"github.com/lazypull/lazypull/integration/testimage"
)

// TestCRILazyPullAndRun is Kubernetes' path: containerd's CRI plugin,
// configured with contrib/containerd as the README says, driven by crictl
// the way kubelet drives it. A pull of the converted test image must be
// lazy (every layer a remote snapshot of lazypull in the CRI's namespace,
// no layer blob downloaded), and a container of a pod sandbox (the pause
// image the test built) must read every probed file with the content the
// image was built from, as its logs show.
func TestCRILazyPullAndRun(t *testing.T) {
	forEachFlavour(t, func(t *testing.T, f testbed.Flavour) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		lb := newLazyBed(t, f, lazyBedOptions{CRI: true})
		pushPauseImage(t, ctx, lb, nil)
		ref, img := pushConverted(t, ctx, lb)
		crictl := testbed.NewCrictl(t, lb.Containerd, "")

		if _, err := crictl.Run(ctx, "pull", ref); err != nil {
			t.Fatal(err)
		}
		cl := lb.Containerd.Client(t)
		kctx := namespaces.WithNamespace(ctx, testbed.CRINamespace)
		pulled := inspectImage(t, kctx, cl, ref)
		requireLazy(t, kctx, lb, cl, pulled)

		pod := runPod(t, ctx, lb, crictl, "lazy")
		out := pod.runToCompletion(t, ctx, "probe", ref, append([]string{"/" + testimage.EntrypointPath}, testimage.ProbeFiles...)...)
		requireOutput(t, out, probeOutput(t, img.expected, testimage.ProbeFiles...))
	})
}
