package dataplane

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/containerd/errdefs"
)

// Paths of the calls for operators: what a data plane has fetched of each
// layer it serves, and its metrics.
const (
	// PathStatus answers StatusList; served when the FileSystem is a
	// StatusReporter.
	PathStatus = "/v1/status"
	// PathMetrics answers the data plane's metrics in Prometheus' text
	// exposition format; served when the Server was given WithMetrics.
	PathMetrics = "/v1/metrics"
)

// labelSnapshotRef is the label of a Mount that names the layer's chain ID
// (containerd's snapshots.LabelSnapshotRef).
const labelSnapshotRef = "containerd.io/snapshot.ref"

// maxMetrics bounds the answer of /v1/metrics a Client reads.
const maxMetrics = 16 << 20

// LayerStatus is how much of a layer a data plane serves is local.
type LayerStatus struct {
	Mountpoint string `json:"mountpoint"`
	// Layer is the layer (blob) digest.
	Layer string `json:"layer"`
	// ChainID is the chain ID the layer was mounted for, if the Mount's
	// labels said.
	ChainID string `json:"chainID,omitempty"`
	// Chunks and LocalChunks count the chunks of the layer's file contents
	// and those of them in the chunk cache; TotalBytes and LocalBytes are
	// the same in compressed bytes of the blob.
	Chunks      int   `json:"chunks"`
	LocalChunks int   `json:"localChunks"`
	TotalBytes  int64 `json:"totalBytes"`
	LocalBytes  int64 `json:"localBytes"`
	// FullyLocal is when every chunk was first local; zero until then.
	FullyLocal time.Time `json:"fullyLocal,omitzero"`
	// Reads counts the FUSE reads served; Fetches and FetchedBytes, the
	// reads of the blob from the registry and their bytes.
	Reads        int64 `json:"reads"`
	Fetches      int64 `json:"fetches"`
	FetchedBytes int64 `json:"fetchedBytes"`
	// Verification is where the layer's check against its DiffID stands,
	// if the data plane verifies layers.
	Verification *Verification `json:"verification,omitempty"`
}

// StatusList is the answer of /v1/status, in mountpoint order.
type StatusList struct {
	Layers []LayerStatus `json:"layers"`
}

// StatusReporter is a FileSystem that says how much of each layer it
// serves is local (fs.FileSystem does, through cmd/lazypulld's adapter).
type StatusReporter interface {
	Status(ctx context.Context) ([]LayerStatus, error)
}

// ServerOption configures a Server.
type ServerOption func(*Server)

// WithMetrics has the Server answer /v1/metrics with h, which writes the
// data plane's metrics in Prometheus' text format.
func WithMetrics(h http.Handler) ServerOption {
	return func(s *Server) { s.metrics = h }
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	sr, ok := s.fs.(StatusReporter)
	if !ok {
		writeError(w, fmt.Errorf("%s: this data plane does not report layer status: %w", r.URL.Path, errdefs.ErrNotImplemented))
		return
	}
	ls, err := sr.Status(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	s.mu.Lock()
	for i := range ls {
		if ls[i].ChainID == "" {
			ls[i].ChainID = s.mounts[ls[i].Mountpoint][labelSnapshotRef]
		}
	}
	s.mu.Unlock()
	writeJSON(w, StatusList{Layers: ls})
}

func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request) {
	if s.metrics == nil {
		writeError(w, fmt.Errorf("%s: this data plane has no metrics: %w", r.URL.Path, errdefs.ErrNotImplemented))
		return
	}
	s.metrics.ServeHTTP(w, r)
}

// Status asks the data plane how much of each layer it serves is local. A
// data plane that cannot say (or predates the call) answers with an error
// of class NotImplemented.
func (c *Client) Status(ctx context.Context) ([]LayerStatus, error) {
	var l StatusList
	err := c.call(ctx, http.MethodGet, PathStatus, nil, &l)
	return l.Layers, err
}

// Metrics returns the data plane's metrics in Prometheus' text format. A
// data plane without metrics (or that predates the call) answers with an
// error of class NotImplemented.
func (c *Client) Metrics(ctx context.Context) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://dataplane"+PathMetrics, nil)
	if err != nil {
		return nil, fmt.Errorf("data plane %s: %s: %w", c.socket, PathMetrics, err)
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("data plane %s: %s: %v: %w", c.socket, PathMetrics, err, errdefs.ErrUnavailable)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return nil, decodeAnswerError(c.socket, PathMetrics, resp)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxMetrics+1))
	switch {
	case err != nil:
		return nil, fmt.Errorf("data plane %s: %s: %v: %w", c.socket, PathMetrics, err, errdefs.ErrUnavailable)
	case len(b) > maxMetrics:
		return nil, fmt.Errorf("data plane %s: %s: more than %d bytes: %w", c.socket, PathMetrics, maxMetrics, errdefs.ErrResourceExhausted)
	}
	return b, nil
}
