package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/lazypull/lazypull/integration/testbed"
	"github.com/lazypull/lazypull/integration/testimage"
)

// scrapeMetrics reads lazypulld's metrics on the unix socket sock.
func scrapeMetrics(t *testing.T, ctx context.Context, sock string) map[string]*dto.MetricFamily {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://lazypulld/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
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

// sumMetric sums the samples of family name whose labels include want (a
// histogram's count).
func sumMetric(mfs map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
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
		sum += m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount())
	}
	return sum
}

// statusImage is an image of `lazypull status --json`.
type statusImage struct {
	Ref    string `json:"ref"`
	Layers []struct {
		Digest       string `json:"digest"`
		Lazy         bool   `json:"lazy"`
		Reason       string `json:"reason"`
		Verified     string `json:"verified"`
		TotalBytes   *int64 `json:"totalBytes"`
		FetchedBytes *int64 `json:"fetchedBytes"`
	} `json:"layers"`
}

// lazypullStatus runs `lazypull status` on the bed, with more args.
func lazypullStatus(t *testing.T, ctx context.Context, lb *lazyBed, args ...string) string {
	t.Helper()
	ctrd := lb.Containerd
	cmd := exec.CommandContext(ctx, lazypullBin, append([]string{"status", "--address", ctrd.Address, "--namespace", ctrd.Namespace,
		"--snapshotter", testbed.SnapshotterName, "--root", lb.Lazypulld.Root}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("lazypull status %v: %v\n%s", args, err, stderr.String())
	}
	return stdout.String()
}

// TestObservability pulls an eStargz image lazily with `lazypull pull`,
// which shows each layer mounted lazily as it happens, runs a container
// that reads its files, and checks what an operator sees: the metrics
// scraped from lazypulld count requests to the registry's host, the layers
// mounted lazily and FUSE reads, from the data plane that served them; and
// `lazypull status` lists every layer of the image as lazy, with the bytes
// fetched for it.
func TestObservability(t *testing.T) {
	forEachFlavour(t, func(t *testing.T, f testbed.Flavour) {
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		defer cancel()
		sock := filepath.Join(testbed.Dir(t, "metrics"), "metrics.sock")
		lb := newLazyBed(t, f, lazyBedOptions{Tables: fmt.Sprintf("[metrics]\naddress = %q\n", sock)})
		orig, img := pushDefaultImage(t, ctx, lb.Registry)
		ref := convertImage(t, ctx, orig, lb.Registry.Ref("lazypull/testimage:esgz"))

		ctrd := lb.Containerd
		cmd := exec.CommandContext(ctx, lazypullBin, "pull", "--address", ctrd.Address, "--namespace", ctrd.Namespace,
			"--snapshotter", testbed.SnapshotterName, "--hosts-dir", lb.HostsDir, ref)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("lazypull pull: %v\n%s", err, stderr.String())
		}
		if n := strings.Count(stderr.String(), "mounted lazily\n"); n != len(img.layers) {
			t.Errorf("lazypull pull's progress shows %d layers mounted lazily, want %d:\n%s", n, len(img.layers), stderr.String())
		}
		out, err := runHashfiles(ctx, lb, ref, "observe-probe", testimage.ProbeFiles...)
		if err != nil {
			t.Fatal(err)
		}
		requireOutput(t, out, probeOutput(t, img.expected, testimage.ProbeFiles...))

		mfs := scrapeMetrics(t, ctx, sock)
		host := map[string]string{"host": lb.Registry.Host}
		for _, c := range []struct {
			name   string
			labels map[string]string
			least  float64
		}{
			{"lazypull_layers_mounted_total", nil, float64(len(img.layers))},
			{"lazypull_registry_requests_total", host, 1},
			{"lazypull_registry_received_bytes_total", host, 1},
			{"lazypull_registry_request_duration_seconds", host, 1},
			{"lazypull_fuse_operation_duration_seconds", map[string]string{"op": "read"}, 1},
			{"lazypull_fuse_operation_duration_seconds", map[string]string{"op": "lookup"}, 1},
			{"lazypull_layers", map[string]string{"state": "mounted"}, float64(len(img.layers))},
			{"lazypull_data_plane_up", nil, 1},
		} {
			if got := sumMetric(mfs, c.name, c.labels); got < c.least {
				t.Errorf("%s%v = %v, want at least %v", c.name, c.labels, got, c.least)
			}
		}
		if got := sumMetric(mfs, "lazypull_layer_fallbacks_total", nil); got != 0 {
			t.Errorf("lazypull_layer_fallbacks_total = %v, want 0", got)
		}
		for _, mf := range mfs {
			for _, m := range mf.Metric {
				for _, l := range m.Label {
					if strings.HasPrefix(l.GetValue(), "sha256:") {
						t.Errorf("%s has a label with a digest: %s=%s", mf.GetName(), l.GetName(), l.GetValue())
					}
				}
			}
		}

		var imgs []statusImage
		if err := json.Unmarshal([]byte(lazypullStatus(t, ctx, lb, "--json", ref)), &imgs); err != nil {
			t.Fatal(err)
		}
		if len(imgs) != 1 || len(imgs[0].Layers) != len(img.layers) {
			t.Fatalf("lazypull status: %+v, want 1 image of %d layers", imgs, len(img.layers))
		}
		var fetched int64
		for _, l := range imgs[0].Layers {
			if !l.Lazy || l.TotalBytes == nil || l.FetchedBytes == nil {
				t.Errorf("lazypull status: layer %s: lazy %v (%s), bytes %v fetched %v; want lazy, with its bytes", l.Digest, l.Lazy, l.Reason, l.TotalBytes, l.FetchedBytes)
				continue
			}
			fetched += *l.FetchedBytes
		}
		if fetched == 0 {
			t.Errorf("lazypull status: no bytes fetched for any layer of %s after a container read its files", ref)
		}
		table := lazypullStatus(t, ctx, lb)
		if !strings.Contains(table, ref) || strings.Count(table, " yes ") < len(img.layers) {
			t.Errorf("lazypull status's table lacks %s's %d lazy layers:\n%s", ref, len(img.layers), table)
		}
		t.Logf("lazypull status:\n%s", table)
	})
}

// TestFallbackErrorFailsPull: with [snapshotter] fallback = "error", the
// pull of an image that is not eStargz fails, naming the layer and the
// reason, on the pull path of each containerd (lazypull pull on 1.6, ctr's
// transfer service on 2.x), instead of downloading the image.
func TestFallbackErrorFailsPull(t *testing.T) {
	forEachFlavour(t, func(t *testing.T, f testbed.Flavour) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		lb := newLazyBed(t, f, lazyBedOptions{Tables: "[snapshotter]\nfallback = \"error\"\n"})
		ref, img := pushDefaultImage(t, ctx, lb.Registry)
		var err error
		if f.ConfigVersion < 3 {
			_, err = lazypullPullErr(ctx, lb, ref)
		} else {
			err = lb.Containerd.Pull(ctx, testbed.SnapshotterName, ref)
		}
		if err == nil {
			t.Fatalf("pull of the gzip image %s succeeded, want it to fail", ref)
		}
		t.Logf("the pull failed: %v", err)
		layers, lerr := img.img.Layers()
		if lerr != nil {
			t.Fatal(lerr)
		}
		first, lerr := layers[0].Digest()
		if lerr != nil {
			t.Fatal(lerr)
		}
		for _, want := range []string{first.String(), "cannot be mounted lazily", "not_estargz", "TOC digest"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("the pull's error does not say %q:\n%v", want, err)
			}
		}
		cl := lb.Containerd.Client(t)
		sn := cl.SnapshotService(testbed.SnapshotterName)
		nctx := namespaces.WithNamespace(ctx, lb.Containerd.Namespace)
		if _, err := sn.Stat(nctx, img.chainIDs[0].String()); err == nil {
			t.Errorf("snapshot %s exists after the failed pull", img.chainIDs[0])
		}
	})
}
