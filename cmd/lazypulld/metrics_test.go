package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/lazypull/lazypull/dataplane"
)

// scrape reads the metrics served on the unix socket sock.
func scrape(t *testing.T, sock string) map[string]*dto.MetricFamily {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://lazypulld/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

// metricValue sums the samples of family name whose labels include want
// (a histogram's count).
func metricValue(mfs map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	var sum float64
	mf := mfs[name]
	if mf == nil {
		return 0
	}
next:
	for _, m := range mf.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	return sum
}

// An operator scraping the daemon sees a lazy mount, a fallback with its
// reason, the registry requests of the data plane by host, and the FUSE
// reads of the layer, each labelled with the data plane that counted it.
// The data plane tells how much of the layer is local.
func TestMetricsThroughDaemon(t *testing.T) {
	e := newEnv(t)
	reg, ref, layers := pushLayers(t, 1, nil)
	host := strings.TrimPrefix(reg.URL, "http://")
	metricsSock := filepath.Join(e.dir, "run", "metrics.sock")
	cfg := fmt.Sprintf("[remote]\nhosts_dir = %q\n[fs]\nbackground_fetch = false\n[metrics]\naddress = %q\n", e.hostsFor(t, reg), metricsSock)
	if err := os.WriteFile(e.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	d := start(t, e.args()...)
	d.waitServing(t, e.address)
	sn := dialSnapshotter(t, e.address)
	ctx := t.Context()

	prepareLazy(t, sn, "chain-lazy", "", ref, layers[0])
	// A layer whose manifest gives no TOC digest falls back.
	if _, err := sn.Prepare(ctx, "extract-plain", "", snapshots.WithLabels(map[string]string{
		snapshots.LabelSnapshotRef:                "chain-plain",
		"containerd.io/snapshot/cri.image-ref":    ref,
		"containerd.io/snapshot/cri.layer-digest": layers[0].digest,
	})); err != nil {
		t.Fatalf("Prepare of a layer that falls back: %v", err)
	}

	planeID := planeIDOf(t, e.root, planeInfos(t, e.root)[0].PID)
	c := dataplane.NewClient(filepath.Join(e.root, planesDir, planeID, planeSocket))
	defer c.Close()
	status, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(status) != 1 || status[0].ChainID != "chain-lazy" || status[0].Layer != layers[0].digest || status[0].TotalBytes == 0 {
		t.Fatalf("data plane status %+v, want layer %s of chain-lazy with its bytes", status, layers[0].digest)
	}
	if b, err := os.ReadFile(filepath.Join(status[0].Mountpoint, "l000")); err != nil || string(b) != "layer 0\n" {
		t.Fatalf("read the lazy layer's file: %q, %v", b, err)
	}

	mfs := scrape(t, metricsSock)
	plane := map[string]string{labelDataPlane: planeID}
	for _, c := range []struct {
		name   string
		labels map[string]string
		least  float64
	}{
		{"lazypull_layers_mounted_total", nil, 1},
		{"lazypull_layer_fallbacks_total", map[string]string{"reason": "not_estargz"}, 1},
		{"lazypull_data_plane_up", plane, 1},
		{"lazypull_registry_requests_total", map[string]string{"host": host, labelDataPlane: planeID}, 1},
		{"lazypull_registry_received_bytes_total", map[string]string{"host": host}, 1},
		{"lazypull_registry_request_duration_seconds", map[string]string{"host": host}, 1},
		{"lazypull_fuse_operation_duration_seconds", map[string]string{"op": "read", labelDataPlane: planeID}, 1},
		{"lazypull_layers", map[string]string{"state": "mounted"}, 1},
		{"lazypull_layer_bytes", map[string]string{"state": "total"}, float64(status[0].TotalBytes)},
	} {
		if got := metricValue(mfs, c.name, c.labels); got < c.least {
			t.Errorf("%s%v = %v, want at least %v", c.name, c.labels, got, c.least)
		}
	}
	if got := metricValue(mfs, "lazypull_layers_mounted_total", nil); got != 1 {
		t.Errorf("lazypull_layers_mounted_total = %v, want 1", got)
	}
	if code := d.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if _, err := os.Stat(metricsSock); !os.IsNotExist(err) {
		t.Errorf("metrics socket after the daemon stopped: %v, want it removed", err)
	}
}

// With [snapshotter] fallback = "error", a layer that cannot be mounted
// lazily fails its Prepare, through the daemon, with an error that names
// the layer and the reason: the pull fails instead of downloading.
func TestFallbackErrorThroughDaemon(t *testing.T) {
	e := newEnv(t)
	if err := os.WriteFile(e.config, []byte("[snapshotter]\nfallback = \"error\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := start(t, e.args()...)
	d.waitServing(t, e.address)
	sn := dialSnapshotter(t, e.address)
	const layer = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	_, err := sn.Prepare(ctx, "extract-plain", "", snapshots.WithLabels(map[string]string{
		snapshots.LabelSnapshotRef:                "chain-plain",
		"containerd.io/snapshot/cri.image-ref":    "registry.test/plain:1",
		"containerd.io/snapshot/cri.layer-digest": layer,
	}))
	if !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("Prepare = %v, want an error of class FailedPrecondition", err)
	}
	for _, want := range []string{layer, "not_estargz", "no TOC digest"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if _, err := sn.Stat(ctx, "extract-plain"); !errdefs.IsNotFound(err) {
		t.Errorf("Stat after the failed Prepare: %v, want not found", err)
	}
}
