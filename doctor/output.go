package doctor

import (
	"encoding/json"
	"fmt"
	"io"
)

// WriteText writes one line per finding, "STATUS check: found; fix: ...",
// and a summary line. color adds ANSI colors to the status (for a
// terminal).
func (r Report) WriteText(w io.Writer, color bool) error {
	width := 0
	for _, f := range r.Findings {
		width = max(width, len(f.Check))
	}
	for _, f := range r.Findings {
		status := fmt.Sprintf("%-4s", f.Status)
		if color {
			status = colors[f.Status] + status + "\x1b[0m"
		}
		line := fmt.Sprintf("%s  %-*s  %s", status, width, f.Check, f.Found)
		if f.Fix != "" {
			line += " -> " + f.Fix
		}
		if _, err := fmt.Fprintln(w, line); err != nil {
			return err
		}
	}
	_, err := fmt.Fprintln(w, r.summary())
	return err
}

var colors = map[Status]string{OK: "\x1b[32m", Skip: "\x1b[2m", Warn: "\x1b[33m", Fail: "\x1b[1;31m"}

func (r Report) summary() string {
	fails, warns := r.Count(Fail), r.Count(Warn)
	switch {
	case fails > 0:
		return fmt.Sprintf("%d failed, %s: lazy pulls will not work until the failures are fixed", fails, plural(warns, "warning"))
	case warns > 0:
		return fmt.Sprintf("no failures, %s: lazy pulls work", plural(warns, "warning"))
	}
	return "no failures, no warnings: lazy pulls work"
}

// WriteJSON writes the report as one JSON object: the findings, the
// counts and "ok" (no failures).
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(struct {
		OK       bool      `json:"ok"`
		Failures int       `json:"failures"`
		Warnings int       `json:"warnings"`
		Findings []Finding `json:"findings"`
	}{!r.Failed(), r.Count(Fail), r.Count(Warn), r.Findings})
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}
