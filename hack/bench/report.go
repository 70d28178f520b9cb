package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/lazypull/lazypull/integration/testbed"
)

// metric is one number of a result, summarized over the runs of a row.
type metric struct {
	Key, Title string
	format     string // of one value
	get        func(result) (float64, bool)
}

var (
	timeMetrics = []metric{
		{"pull_s", "pull", "%.2f", func(r result) (float64, bool) { return r.Pull, true }},
		{"output_s", "run→output", "%.2f", func(r result) (float64, bool) { return r.Output, true }},
		{"total_s", "total", "%.2f", func(r result) (float64, bool) { return r.Total, true }},
		{"warm_s", "warm run", "%.2f", func(r result) (float64, bool) { return r.Warm, true }},
		{"local_s", "fully local", "%.1f", func(r result) (float64, bool) {
			if r.Local == nil {
				return 0, false
			}
			return *r.Local, true
		}},
		{"verified_s", "verified", "%.1f", func(r result) (float64, bool) {
			if r.Verified == nil {
				return 0, false
			}
			return *r.Verified, true
		}},
	}
	dataMetrics = []metric{
		{"start_mib", "MiB at output", "%.1f", func(r result) (float64, bool) { return float64(r.StartBytes) / (1 << 20), true }},
		{"mib", "MiB total", "%.1f", func(r result) (float64, bool) { return float64(r.Bytes) / (1 << 20), true }},
		{"start_requests", "requests at output", "%.0f", func(r result) (float64, bool) { return float64(r.StartRequests), true }},
		{"requests", "requests total", "%.0f", func(r result) (float64, bool) { return float64(r.Requests), true }},
	}
)

// stat summarizes the values of a metric over the runs of a row.
type stat struct {
	N                int
	Median, Min, Max float64
}

func summarize(vs []float64) stat {
	if len(vs) == 0 {
		return stat{}
	}
	slices.Sort(vs)
	m := vs[len(vs)/2]
	if len(vs)%2 == 0 {
		m = (vs[len(vs)/2-1] + vs[len(vs)/2]) / 2
	}
	return stat{N: len(vs), Median: m, Min: vs[0], Max: vs[len(vs)-1]}
}

// row is the summary of the runs of one image, workload and mode.
type row struct {
	Image    string          `json:"image"`
	Workload string          `json:"workload"`
	Mode     string          `json:"mode"`
	Runs     int             `json:"runs"`
	Failed   int             `json:"failed"`
	Stats    map[string]stat `json:"stats"`
}

// report is what a benchmark found.
type report struct {
	Containerd string    `json:"containerd"`
	RTTms      float64   `json:"rtt_ms"`
	RateBits   int64     `json:"rate_bits_per_second"`
	Link       string    `json:"link"` // -link: kernel or proxy
	CPUHog     int       `json:"cpu_hog"`
	LinkCheck  linkCheck `json:"link_check"`
	// LinkDuringRuns is what the kernel link dropped and how late its
	// delay line was from the check's end to the last run's.
	LinkDuringRuns *linkRuns `json:"link_during_runs,omitempty"`
	RunsPerRow     int       `json:"runs_per_row"`
	WallS          float64   `json:"wall_s"`
	Images         []*image  `json:"images"`
	Rows           []row     `json:"rows"`
	Results        []result  `json:"results"`
}

func newReport(b *bench, imgs []*image, results []result, check linkCheck, wall time.Duration) *report {
	rep := &report{Containerd: testbed.Containerd2Version, RTTms: float64(b.rtt) / float64(time.Millisecond), RateBits: b.rate,
		Link: b.link, CPUHog: b.cpuHog, LinkCheck: check, RunsPerRow: b.runs, WallS: wall.Seconds(), Images: imgs, Results: results}
	for _, img := range imgs {
		for _, w := range b.workloadsOf(img) {
			for _, m := range b.modesOf(img, w) {
				rw := row{Image: img.Name, Workload: w.Name, Mode: m, Stats: map[string]stat{}}
				var ok []result
				for _, r := range results {
					if r.Image == img.Name && r.Workload == w.Name && r.Mode == m {
						if r.Error != "" {
							rw.Failed++
						} else {
							ok = append(ok, r)
						}
					}
				}
				rw.Runs = len(ok)
				for _, mt := range append(slices.Clone(timeMetrics), dataMetrics...) {
					var vs []float64
					for _, r := range ok {
						if v, has := mt.get(r); has {
							vs = append(vs, v)
						}
					}
					rw.Stats[mt.Key] = summarize(vs)
				}
				rep.Rows = append(rep.Rows, rw)
			}
		}
	}
	return rep
}

func (rep *report) row(img, wl, mode string) *row {
	for i := range rep.Rows {
		if r := &rep.Rows[i]; r.Image == img && r.Workload == wl && r.Mode == mode {
			return r
		}
	}
	return nil
}

// print writes the tables: per image, the time metrics and then the data
// metrics, each row the median (min-max) over the runs, and the ratio of
// the medians, lazypull/overlayfs.
func (rep *report) print(w io.Writer) {
	about := "every packet delayed in the kernel's network path"
	if rep.Link == linkProxy {
		about = "OPTIMISTIC: a delaying TCP proxy on loopback, no slow start, new and idle connections nearly free"
	}
	fmt.Fprintf(w, "\nlazypull benchmark: containerd %s, %s link (%s), RTT %v, %s",
		rep.Containerd, rep.Link, about, time.Duration(rep.RTTms*float64(time.Millisecond)), formatRate(rep.RateBits))
	if rep.CPUHog > 0 {
		fmt.Fprintf(w, ", %d busy loops beside the runs", rep.CPUHog)
	}
	fmt.Fprintf(w, "\n%s\n", rep.LinkCheck)
	if rep.LinkDuringRuns != nil {
		fmt.Fprintf(w, "%s\n", rep.LinkDuringRuns)
	}
	fmt.Fprintf(w, "N = %d cold runs per row; median (min-max); seconds; wall time %s\n", rep.RunsPerRow, time.Duration(rep.WallS*float64(time.Second)).Round(time.Second))
	fmt.Fprintln(w, "pull: ctr image pull; run→output: ctr run until the first output; total: both; warm run: a second ctr run;")
	fmt.Fprintln(w, "fully local: from the pull until every layer is on the node; verified: until every layer was checked against its DiffID; MiB and requests: served by the registry.")
	for _, img := range rep.Images {
		fmt.Fprintf(w, "\n%s: %d layers, gzip %s, eStargz %s (%d chunks, %s uncompressed)",
			img.Name, img.Layers, mib(img.GzipBytes), mib(img.EstargzBytes), img.Local.Entries, mib(img.Local.Bytes))
		if img.PrioRef != "" {
			fmt.Fprintf(w, "; lazypull-prio: the %d files %s reads first in each layer", img.PrioFiles, img.Spec.Start.Name)
		}
		switch {
		case img.ProfileChunks > 0:
			fmt.Fprintf(w, "; lazypull-profile: the plain eStargz image on a fresh node with a profile of %d chunks learned on another (%s)", img.ProfileChunks, profileNote)
		case img.ProfileSkipped != "":
			fmt.Fprintf(w, "; lazypull-profile skipped: %s", img.ProfileSkipped)
		}
		fmt.Fprintln(w)
		for _, metrics := range [][]metric{timeMetrics, dataMetrics} {
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprint(tw, "workload\tmode")
			for _, m := range metrics {
				fmt.Fprintf(tw, "\t%s", m.Title)
			}
			fmt.Fprintln(tw)
			for _, wl := range rep.workloads(img.Name) {
				rows := rep.rowsOf(img.Name, wl)
				for _, r := range rows {
					fmt.Fprintf(tw, "%s\t%s", wl, r.Mode)
					for _, m := range metrics {
						fmt.Fprintf(tw, "\t%s", r.cell(m))
					}
					if r.Failed > 0 {
						fmt.Fprintf(tw, "\t(%d failed)", r.Failed)
					}
					fmt.Fprintln(tw)
				}
				ov := rep.row(img.Name, wl, modeOverlay)
				for _, r := range rows {
					if r == ov || ov == nil {
						continue
					}
					fmt.Fprintf(tw, "%s\t%s/%s", wl, r.Mode, ov.Mode)
					for _, m := range metrics {
						fmt.Fprintf(tw, "\t%s", ratio(r.Stats[m.Key], ov.Stats[m.Key]))
					}
					fmt.Fprintln(tw)
				}
			}
			tw.Flush()
			fmt.Fprintln(w)
		}
	}
	for _, r := range rep.Results {
		if r.Note != "" {
			fmt.Fprintf(w, "note: %s/%s/%s #%d: %s\n", r.Image, r.Workload, r.Mode, r.Run, r.Note)
		}
	}
}

// rowsOf returns the rows of an image and workload, in the order of modes.
func (rep *report) rowsOf(img, wl string) []*row {
	var rows []*row
	for _, m := range modes {
		if r := rep.row(img, wl, m); r != nil {
			rows = append(rows, r)
		}
	}
	return rows
}

func (rep *report) workloads(img string) []string {
	var ws []string
	for _, r := range rep.Rows {
		if r.Image == img && !slices.Contains(ws, r.Workload) {
			ws = append(ws, r.Workload)
		}
	}
	return ws
}

func (r *row) cell(m metric) string {
	s := r.Stats[m.Key]
	if s.N == 0 {
		return "n/a"
	}
	c := fmt.Sprintf(m.format+" ("+m.format+"-"+m.format+")", s.Median, s.Min, s.Max)
	if s.N < r.Runs {
		c += fmt.Sprintf(" [%d of %d]", s.N, r.Runs)
	}
	return c
}

func ratio(a, b stat) string {
	if a.N == 0 || b.N == 0 || b.Median == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a.Median/b.Median)
}

// write saves results.json and chart.png in dir.
func (rep *report) write(dir string) error {
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(data, '\n'), 0o644); err != nil {
		return err
	}
	return rep.chart(filepath.Join(dir, "chart.png"))
}

// String is the progress line of a run.
func (r result) String(runs int) string {
	head := fmt.Sprintf("%s %s %s %d/%d:", r.Image, r.Workload, r.Mode, r.Run, runs)
	if r.Error != "" {
		first, _, _ := strings.Cut(r.Error, "\n")
		return head + " FAILED: " + first
	}
	local := "n/a"
	if r.Local != nil {
		local = fmt.Sprintf("%.1fs", *r.Local)
	}
	verified := "n/a"
	if r.Verified != nil {
		verified = fmt.Sprintf("%.1fs", *r.Verified)
	}
	s := fmt.Sprintf("%s pull %.2fs, output after %.2fs (total %.2fs), warm %.2fs, fully local %s, verified %s; %s/%d requests at output, %s total",
		head, r.Pull, r.Output, r.Total, r.Warm, local, verified, mib(r.StartBytes), r.StartRequests, mib(r.Bytes))
	if r.Note != "" {
		s += "; " + r.Note
	}
	return s
}
