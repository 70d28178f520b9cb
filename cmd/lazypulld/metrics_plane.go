package main

import (
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lazypull/lazypull/cache"
	"github.com/lazypull/lazypull/fs"
	"github.com/lazypull/lazypull/remote"
)

// planeMetrics are a data plane's metrics: its registry client's requests
// per host, counted as they happen (a remote.Observer), and what its layer
// filesystems and chunk cache count, read at each scrape. The daemon
// gathers them from /v1/metrics (see metrics.go). No label names a layer:
// hosts are bounded by [metrics] max_hosts, FUSE operations and results
// are fixed sets.
type planeMetrics struct {
	reg   *prometheus.Registry
	hosts *hostSet

	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	received *prometheus.CounterVec
	retries  *prometheus.CounterVec
	stalls   *prometheus.CounterVec

	// What the collector reads; set once the data plane has built them.
	mu     sync.Mutex
	layers *fs.FileSystem
	chunks *cache.Dir
}

var _ remote.Observer = (*planeMetrics)(nil)

func newPlaneMetrics(maxHosts int) *planeMetrics {
	m := &planeMetrics{
		reg:   prometheus.NewRegistry(),
		hosts: newHostSet(maxHosts),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lazypull_registry_requests_total",
			Help: "HTTP requests to registry hosts (mirrors, token servers and blob storage included), each attempt of a retried one, by answer status (\"error\" for none).",
		}, []string{"host", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lazypull_registry_request_duration_seconds",
			Help:    "Time from sending a request to a registry host to the answer's headers.",
			Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
		}, []string{"host"}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lazypull_registry_received_bytes_total",
			Help: "Bytes of the answers' bodies received from registry hosts.",
		}, []string{"host"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lazypull_registry_retries_total",
			Help: "Requests sent again after a temporary failure, and reads that asked again for the rest of an answer that broke off.",
		}, []string{"host"}),
		stalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lazypull_registry_stalls_total",
			Help: "Answers given up because their body brought no byte for [remote] stall_timeout.",
		}, []string{"host"}),
	}
	m.reg.MustRegister(m.requests, m.latency, m.received, m.retries, m.stalls, (*planeCollector)(m))
	return m
}

// handler serves the metrics in the text format, for /v1/metrics.
func (m *planeMetrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// watch has the collector read layers and chunks from now on.
func (m *planeMetrics) watch(layers *fs.FileSystem, chunks *cache.Dir) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.layers, m.chunks = layers, chunks
}

func (m *planeMetrics) Request(host string, status int, d time.Duration) {
	h := m.hosts.label(host)
	m.requests.WithLabelValues(h, statusCode(status)).Inc()
	m.latency.WithLabelValues(h).Observe(d.Seconds())
}

func (m *planeMetrics) Received(host string, n int) {
	m.received.WithLabelValues(m.hosts.label(host)).Add(float64(n))
}

func (m *planeMetrics) Retried(host string) { m.retries.WithLabelValues(m.hosts.label(host)).Inc() }
func (m *planeMetrics) Stalled(host string) { m.stalls.WithLabelValues(m.hosts.label(host)).Inc() }

// statusCode is the code label of an answer's status: the status itself
// if it is a valid HTTP status (a bounded set), else "error" for no answer
// and "invalid" for a status out of range.
func statusCode(status int) string {
	switch {
	case status == 0:
		return "error"
	case status < 100 || status > 599:
		return "invalid"
	}
	return strconv.Itoa(status)
}

// otherHost is the host label of the hosts beyond the bound.
const otherHost = "other"

// hostSet bounds the host label: the first max hosts seen keep their
// names, the others are "other".
type hostSet struct {
	mu    sync.Mutex
	max   int
	known map[string]struct{}
}

func newHostSet(maxHosts int) *hostSet {
	return &hostSet{max: maxHosts, known: map[string]struct{}{}}
}

func (s *hostSet) label(host string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.known[host]; ok {
		return host
	}
	if len(s.known) >= s.max || host == otherHost {
		return otherHost
	}
	s.known[host] = struct{}{}
	return host
}
