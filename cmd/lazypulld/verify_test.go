package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/dataplane"
	"github.com/lazypull/lazypull/snapshotter"
)

// TestFailedSnapshots: at start, the daemon finds the snapshots that failed
// verification in an earlier run, and only those, to have containerd
// forget them.
func TestFailedSnapshots(t *testing.T) {
	ctx := context.Background()
	sn, err := snapshotter.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	for name, v := range map[string]string{
		"failed":    snapshotter.FailedPrefix + "DiffID differs",
		"verified":  snapshotter.Verified,
		"pending":   "",
		"lookalike": "not " + snapshotter.FailedPrefix,
	} {
		if _, err := sn.Prepare(ctx, name+"-key", ""); err != nil {
			t.Fatal(err)
		}
		labels := map[string]string{}
		if v != "" {
			labels[snapshotter.LabelVerification] = v
		}
		if err := sn.Commit(ctx, name, name+"-key"); err != nil {
			t.Fatal(err)
		}
		// As SetVerification labels a remote snapshot.
		if _, err := sn.Update(ctx, snapshots.Info{Name: name, Labels: labels}, "labels."+snapshotter.LabelVerification); err != nil {
			t.Fatal(err)
		}
	}
	got, err := failedSnapshots(ctx, sn)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{"failed"}) {
		t.Errorf("failedSnapshots = %v, want [failed]", got)
	}
}

// TestVerdictsThroughDataPlanes: the verdicts of a real data plane reach
// the snapshots' labels through the daemon: a layer whose tar gives the
// chain ID it is mounted as is labelled verified, one mounted as a chain
// ID its tar does not give is labelled failed, also when the data plane
// reaches the verdict while no daemon runs (the next one, which adopts
// the data plane, asks it). The verdicts outlive a daemon kill and
// the data plane's death: with the registry gone, its replacement mounts
// the verified layer again and reports it verified at once, from what the
// first one kept, and does not serve the failed one, whose snapshots above
// are then unavailable.
func TestVerdictsThroughDataPlanes(t *testing.T) {
	e := newEnv(t)
	hold := &blobHold{released: make(chan struct{}), asked: make(chan struct{})}
	reg, ref, layers := pushLayers(t, 2, hold.wrap)
	hold.blob.Store(&layers[1].digest)
	// With a tail of 64 bytes a mount reads the footer and the TOC, not
	// the blob's first bytes (tar headers), which only verification reads.
	cfg := fmt.Sprintf("[remote]\nhosts_dir = %q\nretries = 0\nrequest_timeout = \"5s\"\n"+
		"[fs]\nloader_prefetch = false\nbackground_fetch_delay = \"0s\"\nverify = \"background\"\ntail_size = 64\n"+
		"[containerd]\naddress = \"\"\n", e.hostsFor(t, reg))
	if err := os.WriteFile(e.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	d := start(t, e.args()...)
	d.waitServing(t, e.address)
	ctx := t.Context()
	sn := dialSnapshotter(t, e.address)
	good := layers[0].diffID.String() // its chain ID: it has no parent
	bad := digest.FromString("not the chain ID of layer 1 on layer 0").String()
	prepareLazy(t, sn, good, "", ref, layers[0])
	prepareLazy(t, sn, bad, good, ref, layers[1])
	if _, err := sn.Prepare(ctx, "container", bad); err != nil {
		t.Fatal(err)
	}
	waitVerdictLabel(t, sn, good, func(v string) bool { return v == snapshotter.Verified })
	// restart kills the daemon, calls meanwhile and starts it again.
	restart := func(meanwhile func()) {
		t.Helper()
		if err := d.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		d.wait(t)
		meanwhile()
		d = start(t, e.args()...)
		d.waitServing(t, e.address)
		sn = dialSnapshotter(t, e.address)
	}

	// The daemon is killed while the second layer's verification waits
	// for its first bytes, which it gets only then: the verdict comes
	// while no daemon runs, and reaches the label once one starts.
	select {
	case <-hold.asked:
	case <-time.After(time.Minute):
		t.Fatal("the second layer's verification did not ask for its first bytes within a minute")
	}
	dp := planeInfos(t, e.root)[0].PID
	restart(func() {
		close(hold.released)
		waitPlaneVerdict(t, e.root, dp, layers[1].digest, dataplane.VerificationFailed)
	})
	waitVerdictLabel(t, sn, bad, func(v string) bool {
		return strings.HasPrefix(v, snapshotter.FailedPrefix) && strings.Contains(v, layers[1].diffID.String())
	})
	want := map[string]string{good: snapshotter.Verified, bad: snapshotter.FailedPrefix}
	restart(func() {})
	requireVerdictLabels(t, sn, want, "after a daemon kill")

	reg.Close() // from now on, no network
	if err := syscall.Kill(dp, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitRemounted(t, sn, good, time.Now().Add(time.Minute))
	requireVerdictLabels(t, sn, want, "after the data plane died")
	socks, err := filepath.Glob(filepath.Join(e.root, planesDir, "*", planeSocket))
	if err != nil || len(socks) != 1 {
		t.Fatalf("data plane sockets %v (%v), want the replacement's", socks, err)
	}
	c := dataplane.NewClient(socks[0])
	defer c.Close()
	vs, _, err := c.Verifications(ctx, 0)
	if err != nil || len(vs) != 1 || vs[0].Layer != layers[0].digest || vs[0].State != dataplane.VerificationVerified || vs[0].DiffID != good {
		t.Errorf("the replacement data plane's verifications: %+v (%v), want layer %s verified, and only it", vs, err, layers[0].digest)
	}
	if _, err := sn.Mounts(ctx, "container"); !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), layers[1].digest) {
		t.Errorf("Mounts of a container above the failed layer after its data plane died: %v, want unavailable naming the layer", err)
	}
	if code := d.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// requireVerdictLabels requires, of each snapshot named in want, a
// verification label that starts with the value given.
func requireVerdictLabels(t *testing.T, sn snapshots.Snapshotter, want map[string]string, when string) {
	t.Helper()
	for name, w := range want {
		info, err := sn.Stat(t.Context(), name)
		if v := info.Labels[snapshotter.LabelVerification]; err != nil || !strings.HasPrefix(v, w) {
			t.Errorf("%s: %s %s=%q (%v), want %q", when, name, snapshotter.LabelVerification, v, err, w)
		}
	}
}

// waitPlaneVerdict waits until the data plane of process pid under root
// says layer is in state.
func waitPlaneVerdict(t *testing.T, root string, pid int, layer, state string) {
	t.Helper()
	c := dataplane.NewClient(filepath.Join(root, planesDir, planeIDOf(t, root, pid), planeSocket))
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for gen := uint64(0); ; {
		vs, g, err := c.Verifications(ctx, gen)
		if err != nil {
			t.Fatalf("waiting for layer %s to be %s: %v", layer, state, err)
		}
		gen = g
		if slices.ContainsFunc(vs, func(v dataplane.Verification) bool { return v.Layer == layer && v.State == state }) {
			return
		}
	}
}

// waitVerdictLabel waits, for at most a minute, until the verification
// label of snapshot name satisfies ok.
func waitVerdictLabel(t *testing.T, sn snapshots.Snapshotter, name string, ok func(string) bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		info, err := sn.Stat(t.Context(), name)
		if err != nil {
			t.Fatal(err)
		}
		if v := info.Labels[snapshotter.LabelVerification]; ok(v) {
			return
		} else if time.Now().After(deadline) {
			t.Fatalf("snapshot %s: %s=%q a minute after it was mounted", name, snapshotter.LabelVerification, v)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// blobHold holds back the requests for the first bytes of blob (which only
// verification asks for) until released is closed; asked is closed at the
// first.
type blobHold struct {
	blob     atomic.Pointer[string]
	released chan struct{}
	asked    chan struct{}
	once     sync.Once
}

func (h *blobHold) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		blob, rng := h.blob.Load(), r.Header.Get("Range")
		if blob != nil && strings.HasSuffix(r.URL.Path, "/blobs/"+*blob) && strings.HasPrefix(rng, "bytes=0-") && rng != "bytes=0-0" {
			h.once.Do(func() { close(h.asked) })
			select {
			case <-h.released:
			case <-r.Context().Done():
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// planeIDOf returns the directory name, under root's data planes, of the
// data plane of process pid.
func planeIDOf(t *testing.T, root string, pid int) string {
	t.Helper()
	socks, err := filepath.Glob(filepath.Join(root, planesDir, "*", planeSocket))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range socks {
		c := dataplane.NewClient(s)
		info, err := c.Info(t.Context())
		c.Close()
		if err == nil && info.PID == pid {
			return filepath.Base(filepath.Dir(s))
		}
	}
	t.Fatalf("no data plane of pid %d under %s", pid, root)
	return ""
}
