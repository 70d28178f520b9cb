package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want stat
	}{
		{nil, stat{}},
		{[]float64{3, 1, 2}, stat{N: 3, Median: 2, Min: 1, Max: 3}},
		{[]float64{4, 1, 3, 2}, stat{N: 4, Median: 2.5, Min: 1, Max: 4}},
	} {
		if got := summarize(tc.in); got != tc.want {
			t.Errorf("summarize(%v) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]int64{"200mbit": 200e6, "1gbit": 1e9, "1.5Mbit": 1.5e6, "800kbit": 800e3, "64000": 64000} {
		if got, err := parseRate(in); err != nil || got != want {
			t.Errorf("parseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "fast", "-1mbit", "0"} {
		if _, err := parseRate(in); err == nil {
			t.Errorf("parseRate(%q) did not fail", in)
		}
	}
}

// TestReport checks the table's medians, ranges and ratios, and that the
// JSON and the chart are written.
func TestReport(t *testing.T) {
	b := &bench{options: options{runs: 2, rtt: 40 * time.Millisecond, rate: 200e6, workloads: []string{"start"}}}
	img := &image{Spec: images[0], Name: "python3", Layers: 2, GzipBytes: 60 << 20, EstargzBytes: 62 << 20}
	local := func(v float64) *float64 { return &v }
	results := []result{
		{Image: "python3", Workload: "start", Mode: modeOverlay, Run: 1, Pull: 4, Total: 4.2, Local: local(4), StartBytes: 60 << 20},
		{Image: "python3", Workload: "start", Mode: modeOverlay, Run: 2, Pull: 6, Total: 6.2, Local: local(6), StartBytes: 60 << 20},
		{Image: "python3", Workload: "start", Mode: modeLazy, Run: 1, Pull: 0.5, Total: 1.0, StartBytes: 10 << 20, Note: "not fully local"},
		{Image: "python3", Workload: "start", Mode: modeLazy, Run: 2, Pull: 0.5, Total: 1.5, Local: local(8), StartBytes: 12 << 20},
		{Image: "python3", Workload: "start", Mode: modeLazy, Run: 3, Error: "boom"},
	}
	rep := newReport(b, []*image{img}, results, linkCheck{}, time.Minute)
	var out bytes.Buffer
	rep.print(&out)
	for _, want := range []string{
		"5.00 (4.00-6.00)", // overlayfs pull
		"1.25 (1.00-1.50)", // lazypull total
		"8.0 (8.0-8.0) [1 of 2]",
		"(1 failed)",
		"0.10x", // pull ratio 0.5/5
		"0.24x", // total ratio 1.25/5.2
		"note: python3/start/lazypull #1: not fully local",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
	dir := t.TempDir()
	if err := rep.write(dir); err != nil {
		t.Fatal(err)
	}
	png, err := os.ReadFile(filepath.Join(dir, "chart.png"))
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Errorf("chart.png: %v, %d bytes", err, len(png))
	}
	if _, err := os.Stat(filepath.Join(dir, "results.json")); err != nil {
		t.Error(err)
	}
}

// TestBulkFigures checks what the link check reads from a body's arrival:
// the first byte, the time to the first MiB, the mean and the steady rate.
func TestBulkFigures(t *testing.T) {
	ms := time.Millisecond
	// Slow start: 64 KiB, then 1 MiB at 100 ms; then 1 MiB every 40 ms.
	s := []sample{{80 * ms, 64 << 10}, {180 * ms, 1 << 20}}
	for i := int64(2); i <= 8; i++ {
		s = append(s, sample{180*ms + time.Duration(i-1)*40*ms, i << 20})
	}
	b := bulkFigures(s)
	if b.bytes != 8<<20 || b.firstByte != 80*ms || b.firstMiB != 100*ms || b.seconds != 380*ms {
		t.Errorf("bulkFigures = %+v", b)
	}
	// Second half: from 4 MiB (at 300 ms) to 8 MiB (at 460 ms).
	if want := float64(4<<20*8) / 0.160; b.steadyBitsPerSec < want*0.999 || b.steadyBitsPerSec > want*1.001 {
		t.Errorf("steady rate %.0f, want %.0f", b.steadyBitsPerSec, want)
	}
	if b := bulkFigures(s[:1]); b.bytes != 0 {
		t.Errorf("bulkFigures of one sample = %+v, want nothing", b)
	}
}

func TestLastLineMatches(t *testing.T) {
	for _, tc := range []struct {
		out, want string
		ok        bool
	}{
		{"1\n", "1", true},
		{"11\n", "1", false},
		{"nginx: warning\nHTTP/1.1 200 OK\r\n", `HTTP/1\.1 200 OK`, true},
		{"417\n", `[0-9]+`, true},
		{"12345|10000\n", `[0-9]+\|10000`, true},
		{"12345|9999\n", `[0-9]+\|10000`, false},
	} {
		if got := lastLineMatches(tc.out, tc.want); got != tc.ok {
			t.Errorf("lastLineMatches(%q, %q) = %v", tc.out, tc.want, got)
		}
	}
}
