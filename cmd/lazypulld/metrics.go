package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/proto"

	"github.com/lazypull/lazypull/config"
	"github.com/lazypull/lazypull/snapshotter"
)

// The daemon's metrics, served at [metrics] address, are its own (what
// became of the layers offered for lazy pulls, its Go runtime and process)
// and, gathered at each scrape from /v1/metrics, those of its data planes
// (registry requests, FUSE operations, chunk cache, layers and their
// verification; see metrics_plane.go), each with the label data_plane: the
// id of the data plane (its directory under <root>/dataplanes), one per
// running data plane, so a few at most (two during an upgrade), a new one
// after a data plane was replaced.

// planeScrapeTimeout bounds how long a scrape waits for each data plane.
const planeScrapeTimeout = 5 * time.Second

// labelDataPlane is the label of the metrics gathered from data planes.
const labelDataPlane = "data_plane"

// daemonMetrics is the daemon's side of the metrics. It is the
// snapshotter's Observer, and gathers the data planes' metrics from
// planes, if set.
type daemonMetrics struct {
	reg       *prometheus.Registry
	mounted   prometheus.Counter
	fallbacks *prometheus.CounterVec

	mu     sync.Mutex
	planes *planes
}

var _ snapshotter.Observer = (*daemonMetrics)(nil)

// fallbackClasses are every class of fallback reason, so that each has a
// series from the start.
var fallbackClasses = []string{
	snapshotter.FallbackNotAnnotated, snapshotter.FallbackSnapshotConflict, snapshotter.FallbackNoParentChain,
	snapshotter.FallbackNotEStargz, snapshotter.FallbackInvalidLayer, snapshotter.FallbackUnauthorized,
	snapshotter.FallbackNotFound, snapshotter.FallbackUnavailable, snapshotter.FallbackOther,
}

func newDaemonMetrics() *daemonMetrics {
	m := &daemonMetrics{
		reg: prometheus.NewRegistry(),
		mounted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lazypull_layers_mounted_total",
			Help: "Layers that pulls offered to lazypull and that it mounted lazily.",
		}),
		fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lazypull_layer_fallbacks_total",
			Help: "Layers that pulls offered to lazypull and that it did not mount lazily, by class of reason (the snapshot's lazypull.fallback label has the reason itself). With [snapshotter] fallback = \"error\", each failed its pull.",
		}, []string{"reason"}),
	}
	for _, c := range fallbackClasses {
		m.fallbacks.WithLabelValues(c)
	}
	m.reg.MustRegister(m.mounted, m.fallbacks, collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *daemonMetrics) Mounted()            { m.mounted.Inc() }
func (m *daemonMetrics) FellBack(cls string) { m.fallbacks.WithLabelValues(cls).Inc() }

// gatherPlanes has Gather include the metrics of pl's data planes.
func (m *daemonMetrics) gatherPlanes(pl *planes) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.planes = pl
}

// Gather is the daemon's metrics and its data planes'. A data plane that
// does not answer is left out, with lazypull_data_plane_up 0.
func (m *daemonMetrics) Gather() ([]*dto.MetricFamily, error) {
	gs := prometheus.Gatherers{m.reg}
	m.mu.Lock()
	pl := m.planes
	m.mu.Unlock()
	if pl != nil {
		for _, p := range pl.running() {
			gs = append(gs, prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
				return gatherPlane(p), nil
			}))
		}
	}
	return gs.Gather()
}

// running returns the running data planes, in id order.
func (p *planes) running() []*plane {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*plane, 0, len(p.byID))
	for _, pl := range p.byID {
		out = append(out, pl)
	}
	slices.SortFunc(out, func(a, b *plane) int { return strings.Compare(a.id, b.id) })
	return out
}

// gatherPlane returns the metrics of data plane p, labelled with its id,
// and whether it answered (lazypull_data_plane_up).
func gatherPlane(p *plane) []*dto.MetricFamily {
	ctx, cancel := context.WithTimeout(context.Background(), planeScrapeTimeout)
	defer cancel()
	mfs, err := planeFamilies(ctx, p)
	up := 1.0
	if err != nil {
		up = 0
		log.G(ctx).WithError(err).WithField(labelDataPlane, p.id).Warn("metrics of the data plane left out of the scrape")
	}
	return append(mfs, &dto.MetricFamily{
		Name: proto.String("lazypull_data_plane_up"),
		Help: proto.String("Whether the data plane answered the scrape (1) or not (0)."),
		Type: dto.MetricType_GAUGE.Enum(),
		Metric: []*dto.Metric{{
			Label: []*dto.LabelPair{{Name: proto.String(labelDataPlane), Value: proto.String(p.id)}},
			Gauge: &dto.Gauge{Value: proto.Float64(up)},
		}},
	})
}

// planeFamilies reads the metrics of data plane p and labels them.
func planeFamilies(ctx context.Context, p *plane) ([]*dto.MetricFamily, error) {
	b, err := p.client.Metrics(ctx)
	if err != nil {
		return nil, err
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	byName, err := parser.TextToMetricFamilies(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("data plane %s: metrics: %w", p.id, err)
	}
	out := make([]*dto.MetricFamily, 0, len(byName))
	for _, name := range slices.Sorted(maps.Keys(byName)) {
		mf := byName[name]
		for _, m := range mf.Metric {
			m.Label = withLabel(m.Label, labelDataPlane, p.id)
		}
		out = append(out, mf)
	}
	return out, nil
}

// withLabel returns labels with name=value, replacing a label of that
// name, in name order.
func withLabel(labels []*dto.LabelPair, name, value string) []*dto.LabelPair {
	labels = slices.DeleteFunc(labels, func(l *dto.LabelPair) bool { return l.GetName() == name })
	labels = append(labels, &dto.LabelPair{Name: proto.String(name), Value: proto.String(value)})
	slices.SortFunc(labels, func(a, b *dto.LabelPair) int { return strings.Compare(a.GetName(), b.GetName()) })
	return labels
}

// snapshotterOpts are the snapshotter's options from [snapshotter], with m
// told what becomes of the layers.
func snapshotterOpts(cfg *config.Config, m *daemonMetrics) []snapshotter.Opt {
	opts := []snapshotter.Opt{snapshotter.WithObserver(m)}
	if cfg.Snapshotter.Fallback == config.FallbackError {
		opts = append(opts, snapshotter.WithFallbackError())
	}
	return opts
}

// metricsServer serves the metrics at [metrics] address.
type metricsServer struct {
	srv    *http.Server
	served chan error
}

// startMetrics serves m, with the metrics of the data planes of pl (nil
// for none), at cfg.Address (a unix socket path, or host:port) on /metrics
// until stop; with no address it serves nothing.
func startMetrics(ctx context.Context, cfg config.Metrics, m *daemonMetrics, pl *planes) (*metricsServer, error) {
	if cfg.Address == "" {
		return nil, nil
	}
	if pl != nil {
		m.gatherPlanes(pl)
	}
	var l net.Listener
	var err error
	if cfg.IsUnix() {
		l, err = listen(ctx, cfg.Address)
	} else {
		l, err = (&net.ListenConfig{}).Listen(ctx, "tcp", cfg.Address)
	}
	if err != nil {
		return nil, fmt.Errorf("metrics.address: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m, promhttp.HandlerOpts{
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
	}))
	s := &metricsServer{
		srv:    &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		served: make(chan error, 1),
	}
	go func() { s.served <- s.srv.Serve(l) }()
	log.G(ctx).WithField("address", cfg.Address).Info("serving metrics")
	return s, nil
}

// stop stops serving, waiting for scrapes in flight for at most
// shutdownTimeout. A nil metricsServer serves nothing.
func (s *metricsServer) stop(ctx context.Context) {
	if s == nil {
		return
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := s.srv.Shutdown(sctx); err != nil {
		s.srv.Close()
	}
	if err := <-s.served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.G(ctx).WithError(err).Warn("serve metrics")
	}
}
