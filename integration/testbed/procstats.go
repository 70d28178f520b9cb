package testbed

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ProcStats is what the kernel says of a process's resources.
type ProcStats struct {
	// RSS is the resident memory in bytes (VmRSS), HWM its peak (VmHWM).
	RSS, HWM int64
	// Threads is the number of threads (for a Go program, an upper bound
	// of the goroutines running at once, not a count of goroutines).
	Threads int
	// FDs is the number of open file descriptors.
	FDs int
}

func (s ProcStats) String() string {
	return fmt.Sprintf("rss %s (peak %s), %d threads, %d fds", MiBString(s.RSS), MiBString(s.HWM), s.Threads, s.FDs)
}

// ReadProcStats reads the ProcStats of process pid from /proc.
func ReadProcStats(pid int) (ProcStats, error) {
	var s ProcStats
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(value)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		switch key {
		case "VmRSS":
			s.RSS = n << 10 // kB
		case "VmHWM":
			s.HWM = n << 10
		case "Threads":
			s.Threads = int(n)
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return s, err
	}
	s.FDs = len(fds)
	return s, nil
}

// MiBString formats n bytes in MiB with one decimal.
func MiBString(n int64) string { return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20)) }
