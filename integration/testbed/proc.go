package testbed

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ServingPIDs returns the processes that do lazypulld's work, whose lives
// and memory tests watch: the daemon and its data planes, which parse
// layers and serve them. None while the daemon does not run.
func (l *Lazypulld) ServingPIDs() []int {
	if !l.Running() {
		return nil
	}
	pids := []int{l.proc.cmd.Process.Pid}
	planes, _ := l.DataPlanes(context.Background())
	for _, p := range planes {
		pids = append(pids, p.Info.PID)
	}
	return pids
}

// PeakRSS returns the peak resident set size of process pid (VmHWM), in
// bytes, since it started or since ResetPeakRSS.
func PeakRSS(pid int) (int64, error) {
	return statusBytes(pid, "VmHWM:")
}

// RSS returns the resident set size of process pid (VmRSS), in bytes.
func RSS(pid int) (int64, error) {
	return statusBytes(pid, "VmRSS:")
}

// ResetPeakRSS makes process pid's peak resident set size its current one.
func ResetPeakRSS(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

func statusBytes(pid int, key string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("pid %d: %s %q: %w", pid, key, v, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("pid %d: no %s in its status", pid, key)
}
