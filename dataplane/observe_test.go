package dataplane

import (
	"context"
	"maps"
	"net/http"
	"slices"
	"testing"

	"github.com/containerd/errdefs"
)

// statusFS is a testFS that reports its layers' status, without their
// chain IDs.
type statusFS struct{ *testFS }

func (f statusFS) Status(ctx context.Context) ([]LayerStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []LayerStatus
	for _, mp := range slices.Sorted(maps.Keys(f.mounted)) {
		out = append(out, LayerStatus{Mountpoint: mp, Layer: "sha256:" + mp[len(mp)-2:], TotalBytes: 100, LocalBytes: 40, FetchedBytes: 40})
	}
	return out, nil
}

// An operator's status call lists every layer the data plane serves with
// what is local of it and the chain ID the layer was mounted for (from the
// Mount's labels when the FileSystem does not say).
func TestStatus(t *testing.T) {
	c, _ := serve(t, statusFS{newTestFS()})
	ctx := t.Context()
	for _, mp := range []string{"/mp/aa", "/mp/bb"} {
		if _, err := c.Mount(ctx, mp, map[string]string{labelSnapshotRef: "chain-" + mp[4:]}); err != nil {
			t.Fatal(err)
		}
	}
	ls, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 2 {
		t.Fatalf("Status = %+v, want 2 layers", ls)
	}
	for i, want := range []string{"chain-aa", "chain-bb"} {
		if ls[i].ChainID != want || ls[i].LocalBytes != 40 || ls[i].TotalBytes != 100 {
			t.Errorf("layer %d = %+v, want chain ID %s, 40 of 100 bytes local", i, ls[i], want)
		}
	}
}

// A data plane whose FileSystem cannot report status, or that has no
// metrics, says so with the class NotImplemented, which a newer daemon
// tells from a failure.
func TestStatusAndMetricsNotImplemented(t *testing.T) {
	c, _ := serve(t, newTestFS())
	if _, err := c.Status(t.Context()); !errdefs.IsNotImplemented(err) {
		t.Errorf("Status = %v, want not implemented", err)
	}
	if _, err := c.Metrics(t.Context()); !errdefs.IsNotImplemented(err) {
		t.Errorf("Metrics = %v, want not implemented", err)
	}
}

// /v1/metrics answers what the handler the Server was given writes.
func TestMetrics(t *testing.T) {
	const text = "# TYPE lazypull_test_total counter\nlazypull_test_total 3\n"
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_, _ = w.Write([]byte(text))
	})
	c, _, _ := serveServer(t, newTestFS(), WithMetrics(h))
	b, err := c.Metrics(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != text {
		t.Errorf("Metrics = %q, want %q", b, text)
	}
}
