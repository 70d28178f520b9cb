package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/lazypull/lazypull/integration/testbed"
	"github.com/lazypull/lazypull/integration/testimage"
	"github.com/lazypull/lazypull/snapshotter"
)

// sigtermBound is how long a daemon may take to exit on SIGTERM while a
// container reads from its layers.
const sigtermBound = 5 * time.Second

// TestDaemonRestartKeepsContainersReading runs a container that reads the
// probe files of the lazily pulled test image whenever the test asks,
// while lazypulld is killed (SIGKILL) and started again, then stopped
// (SIGTERM) and started again. Every read, before, during each gap and
// after, with the page cache as it is and dropped, returns the right
// bytes; the daemon exits within sigtermBound of SIGTERM; the restarted
// daemon adopts the running data plane rather than starting another; a new
// container of the image works afterwards.
func TestDaemonRestartKeepsContainersReading(t *testing.T) {
	forEachFlavour(t, func(t *testing.T, f testbed.Flavour) {
		ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
		defer cancel()
		lb := newLazyBed(t, f, lazyBedOptions{})
		orig, img := pushDefaultImage(t, ctx, lb.Registry)
		ref := convertImage(t, ctx, orig, lb.Registry.Ref("lazypull/testimage:esgz"))
		pullLazily(t, ctx, lb, ref)
		paths := testimage.ProbeFiles
		want := probeOutput(t, img.expected, paths...)

		r := startReader(t, lb, ref, "restart-reader")
		requireReads(t, r, paths, want, "before any restart")
		dp := onePlane(t, ctx, lb)

		if err := lb.Lazypulld.Kill(); err != nil {
			t.Fatal(err)
		}
		requireReads(t, r, paths, want, "while lazypulld is killed")
		begin := time.Now()
		if err := lb.Lazypulld.Start(t); err != nil {
			t.Fatal(err)
		}
		t.Logf("lazypulld serving %v after its start (SIGKILL'd before)", time.Since(begin))
		requireReads(t, r, paths, want, "after the restart that followed SIGKILL")
		if now := onePlane(t, ctx, lb); now.Info.PID != dp.Info.PID {
			t.Errorf("data plane %d replaced by %d across a daemon restart", dp.Info.PID, now.Info.PID)
		}

		begin = time.Now()
		if err := lb.Lazypulld.Stop(); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(begin); took > sigtermBound {
			t.Errorf("lazypulld took %v to exit on SIGTERM, more than %v", took, sigtermBound)
		} else {
			t.Logf("lazypulld exited %v after SIGTERM", took)
		}
		requireReads(t, r, paths, want, "while lazypulld is stopped")
		if err := lb.Lazypulld.Start(t); err != nil {
			t.Fatal(err)
		}
		requireReads(t, r, paths, want, "after the restart that followed SIGTERM")
		if now := onePlane(t, ctx, lb); now.Info.PID != dp.Info.PID {
			t.Errorf("data plane %d replaced by %d across a daemon restart", dp.Info.PID, now.Info.PID)
		}

		out, err := runHashfiles(ctx, lb, ref, "after-restarts", paths...)
		if err != nil {
			t.Fatal(err)
		}
		requireOutput(t, out, want)
	})
}

// onePlane returns the only data plane of lb's daemon, failing t if there
// is not exactly one.
func onePlane(t *testing.T, ctx context.Context, lb *lazyBed) testbed.DataPlane {
	t.Helper()
	dps, err := lb.Lazypulld.DataPlanes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(dps) != 1 {
		t.Fatalf("%d data planes, want 1: %+v", len(dps), dps)
	}
	return dps[0]
}

// TestDataPlaneKilled kills the data plane under a running container: the
// container's reads fail (not hang) with an error; lazypulld notices, labels
// every layer's snapshot as re-mounted and mounts the layers again, from
// their stored tables of contents, while the registry is down; a new
// container of the image then works.
func TestDataPlaneKilled(t *testing.T) {
	forEachFlavour(t, func(t *testing.T, f testbed.Flavour) {
		ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
		defer cancel()
		lb := newLazyBed(t, f, lazyBedOptions{Front: true})
		orig, img := pushDefaultImage(t, ctx, lb.Registry)
		convertImage(t, ctx, orig, lb.Registry.Ref("lazypull/testimage:esgz"))
		ref := lb.Front.Ref("lazypull/testimage:esgz")
		pullLazily(t, ctx, lb, ref)
		cl := lb.Containerd.Client(t)
		pulled := inspectImage(t, namespaces.WithNamespace(ctx, lb.Containerd.Namespace), cl, ref)
		paths := testimage.ProbeFiles
		want := probeOutput(t, img.expected, paths...)

		r := startReader(t, lb, ref, "killed-reader")
		requireReads(t, r, paths, want, "before the data plane is killed")
		dp := onePlane(t, ctx, lb)

		// Down, the registry fails every request (after retries): a
		// layer whose mount needed it would not be mounted again.
		lb.Front.Down(true)
		if err := killPID(dp.Info.PID); err != nil {
			t.Fatal(err)
		}
		// A bound for an error, not for a read: a read of a dead mount
		// must fail at once, not wait for anything.
		const errBound = 30 * time.Second
		lines, err := r.ask(paths, errBound)
		if err != nil {
			t.Fatalf("reads of a dead data plane's layers: %v", err)
		}
		for _, l := range lines {
			if !strings.HasPrefix(l, "error ") {
				t.Errorf("read of a dead data plane's layer answered %q, want an error", l)
			}
		}
		t.Logf("the container's reads after the kill: %s", lines[0])

		nctx := namespaces.WithNamespace(ctx, lb.Containerd.Namespace)
		ss := cl.SnapshotService(testbed.SnapshotterName)
		for _, id := range pulled.ChainIDs {
			waitUntil(t, ctx, "snapshot "+id.String()+" labelled "+snapshotter.LabelRemounted, func() bool {
				info, err := ss.Stat(nctx, id.String())
				return err == nil && info.Labels[snapshotter.LabelRemounted] != ""
			})
		}
		if now := onePlane(t, ctx, lb); now.Info.PID == dp.Info.PID || len(now.Mounts) != len(pulled.Layers) {
			t.Errorf("after the kill: data plane %d serving %d layers, want a new one serving %d", now.Info.PID, len(now.Mounts), len(pulled.Layers))
		}

		lb.Front.Down(false)
		out, err := runHashfiles(ctx, lb, ref, "after-kill", paths...)
		if err != nil {
			t.Fatal(err)
		}
		requireOutput(t, out, want)
	})
}

// waitUntil polls cond until it holds, failing t if ctx ends first.
func waitUntil(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
