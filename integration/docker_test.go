package integration

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/lazypull/lazypull/integration/testbed"
	"github.com/lazypull/lazypull/integration/testimage"
)

// TestDockerLazyPullAndRun is Docker Engine with the containerd image store
// (dockerd of Docker Engine 29, configured with contrib/docker/daemon.json
// as the README says) on containerd 2.x with lazypull as its snapshotter,
// driven through the Engine API on its unix socket. An image pull must be
// lazy (every layer a remote snapshot of lazypull in Docker's namespace, no
// layer blob in containerd's content store), a container of the image must
// read every probed file right, and the size Docker reports for the image
// must count its layers' files, not just the few kilobytes of manifest and
// configuration that containerd's content store holds.
func TestDockerLazyPullAndRun(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	f, err := testbed.Containerd2()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	lb := newLazyBed(t, f, lazyBedOptions{})
	ref, img := pushConverted(t, ctx, lb)
	dockerd := testbed.StartDockerd(t, lb.Containerd)
	cli, err := client.New(client.WithHost("unix://"+dockerd.Socket), client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()

	pull, err := cli.ImagePull(ctx, ref, client.ImagePullOptions{})
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

	files := img.fileBytes()
	inspect, err := cli.ImageInspect(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("docker reports %d bytes for the image; its layers' files are %d bytes, %d compressed", inspect.Size, files, pulled.layerSize())
	if inspect.Size < files {
		t.Errorf("docker reports %d bytes for the image, less than its layers' %d bytes of files", inspect.Size, files)
	}

	created, err := cli.ContainerCreate(ctx, client.ContainerCreateOptions{
		Config:     &container.Config{Image: ref, Cmd: testimage.ProbeFiles},
		HostConfig: &container.HostConfig{NetworkMode: "none"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = cli.ContainerRemove(context.Background(), created.ID, client.ContainerRemoveOptions{Force: true})
	})
	wait := cli.ContainerWait(ctx, created.ID, client.ContainerWaitOptions{Condition: container.WaitConditionNextExit})
	if _, err := cli.ContainerStart(ctx, created.ID, client.ContainerStartOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-wait.Result:
		if res.StatusCode != 0 {
			t.Errorf("container exited with status %d", res.StatusCode)
		}
	case err := <-wait.Error:
		t.Fatal(err)
	}
	logs, err := cli.ContainerLogs(ctx, created.ID, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	var stdout, stderr bytes.Buffer
	if _, err := stdcopy.StdCopy(&stdout, &stderr, logs); err != nil {
		t.Fatal(err)
	}
	if stderr.Len() > 0 {
		t.Logf("container stderr:\n%s", stderr.String())
	}
	requireOutput(t, stdout.String(), probeOutput(t, img.expected, testimage.ProbeFiles...))
}
