package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/lazypull/lazypull/convert"
)

// progressView shows the progress of the layers of a convert or a pull:
// one row per layer, updated by events. On a terminal it keeps one live
// line per layer in flight, redrawn at most every redrawEvery, and prints
// each layer's final line once; elsewhere it prints a plain line per phase
// change.
type progressView struct {
	w   io.Writer
	tty bool

	mu       sync.Mutex
	rows     map[string]*row
	order    []*row // in order of first event
	live     int    // lines of the live area last drawn
	lastDraw time.Time
}

const redrawEvery = 100 * time.Millisecond

// rowState is where a row stands: queued rows are counted, active ones
// redrawn, final ones printed once.
type rowState int

const (
	rowQueued rowState = iota
	rowActive
	rowFinal
)

// viewEvent is the state of one row of a progressView.
type viewEvent struct {
	key   string // the row's
	phase string // a change of phase prints a line without a terminal
	state rowState
	// line describes the row; without counters (for lines printed once,
	// at the start of a phase) it leaves out what changes within a phase.
	line func(counters bool) string
}

type row struct {
	e       viewEvent
	printed bool // final line printed
}

func newProgressView(w io.Writer, tty bool) *progressView {
	return &progressView{w: w, tty: tty, rows: map[string]*row{}}
}

// update shows a convert.Progress event.
func (v *progressView) update(p convert.Progress) {
	st := rowActive
	switch p.Phase {
	case convert.PhaseQueued:
		st = rowQueued
	case convert.PhaseDone, convert.PhaseSkipped, convert.PhaseFailed:
		st = rowFinal
	}
	v.show(viewEvent{
		key:   fmt.Sprintf("%s\x00%d\x00%s", p.Platform, p.Layer, p.Source),
		phase: p.Phase.String(),
		state: st,
		line:  func(counters bool) string { return line(p, counters) },
	})
}

// show updates the row of e.
func (v *progressView) show(e viewEvent) {
	v.mu.Lock()
	defer v.mu.Unlock()
	r, ok := v.rows[e.key]
	if !ok {
		r = &row{}
		v.rows[e.key] = r
		v.order = append(v.order, r)
	}
	changed := !ok || r.e.phase != e.phase
	r.e = e
	if !v.tty {
		if changed && e.state != rowQueued {
			fmt.Fprintln(v.w, e.line(false))
		}
		return
	}
	if changed || time.Since(v.lastDraw) >= redrawEvery {
		v.draw()
	}
}

// close draws the final state.
func (v *progressView) close() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.tty {
		v.draw()
	}
}

// draw replaces the live area with the lines of newly finished rows, then
// the lines of the rows in flight and a count of the queued ones.
func (v *progressView) draw() {
	var b strings.Builder
	if v.live > 0 {
		fmt.Fprintf(&b, "\x1b[%dA\x1b[J", v.live) // cursor up, clear to end of screen
	}
	var active []string
	queued := 0
	for _, r := range v.order {
		switch r.e.state {
		case rowFinal:
			if !r.printed {
				b.WriteString(r.e.line(true) + "\n")
				r.printed = true
			}
		case rowQueued:
			queued++
		default:
			active = append(active, r.e.line(true))
		}
	}
	for _, l := range active {
		b.WriteString(l + "\n")
	}
	v.live = len(active)
	if queued > 0 {
		fmt.Fprintf(&b, "%d layer(s) queued\n", queued)
		v.live++
	}
	_, _ = io.WriteString(v.w, b.String())
	v.lastDraw = time.Now()
}

// line describes one event, e.g.
// "linux/amd64 layer 2/5 sha256:0123456789ab pushing 3.0 MiB/10.1 MiB";
// without counters (for lines printed once, at the start of a phase) it
// leaves out the bytes done so far.
func line(p convert.Progress, counters bool) string {
	what := "manifest"
	if p.Layer >= 0 {
		what = fmt.Sprintf("layer %d/%d", p.Layer+1, p.Layers)
	}
	if p.Platform != "" {
		what = p.Platform + " " + what
	}
	s := fmt.Sprintf("%s %s %s", what, short(p.Source.String()), p.Phase)
	switch {
	case p.Phase == convert.PhaseFetching && counters:
		s += " " + human(p.Bytes)
	case p.Phase == convert.PhaseConverting && counters:
		s += " " + human(p.Bytes) + " written"
	case p.Phase == convert.PhasePushing && counters:
		s += fmt.Sprintf(" %s/%s", human(p.Bytes), human(p.Total))
	case p.Phase == convert.PhasePushing:
		s += " " + human(p.Total)
	case p.Phase == convert.PhaseDone:
		s += " " + human(p.Total)
	case p.Phase == convert.PhaseSkipped:
		s += ": " + p.Reason
	case p.Phase == convert.PhaseFailed:
		s += fmt.Sprintf(": %v", p.Err)
	}
	return s
}

// short abbreviates a digest to its algorithm and 12 hex digits.
func short(d string) string {
	if i := strings.IndexByte(d, ':'); i >= 0 && len(d) > i+13 {
		return d[:i+13]
	}
	return d
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && isTTY(f)
}
