package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazypull/lazypull/fs"
)

// planeCollector reads, at each scrape, what a data plane's layer
// filesystems and chunk cache count.
type planeCollector planeMetrics

var (
	descFUSE = prometheus.NewDesc("lazypull_fuse_operation_duration_seconds",
		"Time lazypull took to answer FUSE operations on lazily mounted layers (reads the kernel answers from its page cache or through passthrough are not counted).",
		[]string{"op"}, nil)
	descChunkReads = prometheus.NewDesc("lazypull_chunk_reads_total",
		"Chunks that reads of lazily mounted layers needed, by whether they were local (in memory or in the chunk cache: hit) or had to be fetched (miss).",
		[]string{"result"}, nil)
	descVerifications = prometheus.NewDesc("lazypull_verifications_total",
		"Verdicts on lazily mounted layers checked against their DiffID, by result (verified or failed).",
		[]string{"result"}, nil)
	descPanics = prometheus.NewDesc("lazypull_panics_total",
		"Panics recovered by the layer filesystems (each a bug: please report it).", nil, nil)
	descLayers = prometheus.NewDesc("lazypull_layers",
		"Layers served lazily, and those of them whose every chunk is local (fully_local).",
		[]string{"state"}, nil)
	descLayerBytes = prometheus.NewDesc("lazypull_layer_bytes",
		"Compressed bytes of the file contents of the layers served lazily (total) and those of them that are local (local): the progress of the background fetch.",
		[]string{"state"}, nil)
	descCacheRequests = prometheus.NewDesc("lazypull_cache_requests_total",
		"Lookups in the chunk cache, by result (hit or miss).", []string{"result"}, nil)
	descCacheEvictions = prometheus.NewDesc("lazypull_cache_evictions_total",
		"Entries removed from the chunk cache to keep it under its bound.", nil, nil)
	descCacheBytes = prometheus.NewDesc("lazypull_cache_size_bytes",
		"Bytes the chunk cache holds.", nil, nil)
	descCacheLimit = prometheus.NewDesc("lazypull_cache_limit_bytes",
		"The chunk cache's bound in force (lowered when the disk filled up); 0 for none.", nil, nil)
	descCacheEntries = prometheus.NewDesc("lazypull_cache_entries",
		"Entries the chunk cache holds.", nil, nil)
	descCacheWriteErrors = prometheus.NewDesc("lazypull_cache_write_errors_total",
		"Failed writes to the chunk cache.", nil, nil)
)

func (c *planeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descFUSE, descChunkReads, descVerifications, descPanics, descLayers,
		descLayerBytes, descCacheRequests, descCacheEvictions, descCacheBytes, descCacheLimit, descCacheEntries, descCacheWriteErrors} {
		ch <- d
	}
}

func (c *planeCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	layers, chunks := c.layers, c.chunks
	c.mu.Unlock()
	if layers != nil {
		collectFS(ch, layers.Metrics(), layers.Stats())
	}
	if chunks != nil {
		s := chunks.Stats()
		counter := func(d *prometheus.Desc, v uint64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
		}
		gauge := func(d *prometheus.Desc, v int64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v))
		}
		counter(descCacheRequests, s.Hits, "hit")
		counter(descCacheRequests, s.Misses, "miss")
		counter(descCacheEvictions, s.Evictions)
		counter(descCacheWriteErrors, s.WriteErrors)
		gauge(descCacheBytes, s.Bytes)
		gauge(descCacheLimit, s.Limit)
		gauge(descCacheEntries, int64(s.Entries))
	}
}

// collectFS sends the metrics of the layer filesystems.
func collectFS(ch chan<- prometheus.Metric, m fs.Metrics, stats []fs.LayerStats) {
	bounds := fs.LatencyBuckets()
	for _, o := range m.Ops {
		// fs counts each bucket alone; Prometheus' buckets are cumulative.
		buckets := make(map[float64]uint64, len(bounds))
		var n uint64
		for i, b := range bounds {
			n += o.Buckets[i]
			buckets[b] = n
		}
		ch <- prometheus.MustNewConstHistogram(descFUSE, o.Count, o.Sum.Seconds(), buckets, o.Op)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	counter(descChunkReads, float64(m.ChunkHits), "hit")
	counter(descChunkReads, float64(m.ChunkMisses), "miss")
	counter(descVerifications, float64(m.Verified), "verified")
	counter(descVerifications, float64(m.VerifyFailed), "failed")
	counter(descPanics, float64(m.Panics))
	var local int
	var total, localBytes int64
	for _, s := range stats {
		if !s.FullyLocal.IsZero() {
			local++
		}
		total += s.TotalBytes
		localBytes += s.LocalBytes
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(descLayers, float64(len(stats)), "mounted")
	gauge(descLayers, float64(local), "fully_local")
	gauge(descLayerBytes, float64(total), "total")
	gauge(descLayerBytes, float64(localBytes), "local")
}
