package main

import (
	"fmt"
	"image/color"
	"os"
	"slices"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

var modeColors = map[string]color.Color{
	modeOverlay:     color.RGBA{R: 0x99, G: 0x99, B: 0x99, A: 0xff},
	modeLazy:        color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	modeLazyPrio:    color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
	modeLazyProfile: color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
}

// chart draws, side by side, the median cold start (pull + run until the
// first output) and the median data pulled until then, per image and
// workload, overlayfs next to lazypull, as a PNG at path.
func (rep *report) chart(path string) error {
	var groups []string
	type key struct{ img, wl string }
	var keys []key
	for _, img := range rep.Images {
		for _, wl := range rep.workloads(img.Name) {
			groups = append(groups, img.Name+"\n"+wl)
			keys = append(keys, key{img.Name, wl})
		}
	}
	panels := []struct {
		title, metric string
	}{
		{"cold start: pull + run until first output (s)", "total_s"},
		{"MiB from the registry until first output", "start_mib"},
	}
	plots := make([][]*plot.Plot, 1)
	for _, pn := range panels {
		p := plot.New()
		p.Title.Text = pn.title
		p.NominalX(groups...)
		p.X.Min, p.X.Max = -0.5, float64(len(keys))-0.5
		p.Legend.Top, p.Legend.Left = true, true
		width := vg.Points(18)
		var top float64
		var shown []string // modes with results
		for _, m := range modes {
			for _, r := range rep.Rows {
				if r.Mode == m && !slices.Contains(shown, m) {
					shown = append(shown, m)
				}
			}
		}
		for i, m := range shown {
			vs := make(plotter.Values, len(keys))
			for j, k := range keys {
				if r := rep.row(k.img, k.wl, m); r != nil {
					vs[j] = r.Stats[pn.metric].Median
					top = max(top, vs[j])
				}
			}
			bars, err := plotter.NewBarChart(vs, width)
			if err != nil {
				return err
			}
			bars.Color = modeColors[m]
			bars.LineStyle.Width = 0
			bars.Offset = width * (vg.Length(i) - vg.Length(len(shown)-1)/2)
			p.Add(bars)
			p.Legend.Add(m, bars)
		}
		p.Y.Min, p.Y.Max = 0, top*1.25 // room for the legend
		plots[0] = append(plots[0], p)
	}
	img := vgimg.New(vg.Points(900), vg.Points(380))
	dc := draw.New(img)
	top := plot.New()
	top.Title.Text = fmt.Sprintf("lazypull vs overlayfs, containerd %s, RTT %v, %s, median of %d cold runs",
		rep.Containerd, time.Duration(rep.RTTms*float64(time.Millisecond)), formatRate(rep.RateBits), rep.RunsPerRow)
	top.HideAxes()
	header := draw.Crop(dc, 0, 0, dc.Max.Y-dc.Min.Y-vg.Points(24), 0)
	top.Draw(header)
	body := draw.Crop(dc, 0, 0, 0, -vg.Points(28))
	tiles := draw.Tiles{Rows: 1, Cols: len(panels), PadX: vg.Points(16), PadTop: vg.Points(4), PadBottom: vg.Points(4), PadLeft: vg.Points(4), PadRight: vg.Points(8)}
	for j, c := range plot.Align(plots, tiles, body)[0] {
		plots[0][j].Draw(c)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
