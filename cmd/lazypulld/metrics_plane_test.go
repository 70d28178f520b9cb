package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The host label is bounded: hosts beyond [metrics] max_hosts are counted
// as "other", so that a node pulling from many registries (or a registry
// redirecting to ever new storage hosts) cannot grow the series without
// bound.
func TestHostLabelBounded(t *testing.T) {
	m := newPlaneMetrics(2)
	for i := range 5 {
		host := fmt.Sprintf("registry-%d.test", i)
		m.Request(host, 200, time.Millisecond)
		m.Received(host, 10)
	}
	m.Request("registry-0.test", 0, time.Second)
	if n := testutil.CollectAndCount(m.received); n != 3 {
		t.Errorf("%d series of received bytes, want 3 (two hosts and other)", n)
	}
	for host, want := range map[string]float64{"registry-0.test": 10, "registry-1.test": 10, otherHost: 30} {
		if got := testutil.ToFloat64(m.received.WithLabelValues(host)); got != want {
			t.Errorf("bytes from %s = %v, want %v", host, got, want)
		}
	}
	if got := testutil.ToFloat64(m.requests.WithLabelValues("registry-0.test", "error")); got != 1 {
		t.Errorf("requests to registry-0.test without an answer = %v, want 1", got)
	}
}

func TestStatusCode(t *testing.T) {
	for status, want := range map[int]string{0: "error", 206: "206", 404: "404", 99: "invalid", 1000: "invalid"} {
		if got := statusCode(status); got != want {
			t.Errorf("statusCode(%d) = %q, want %q", status, got, want)
		}
	}
}
