package testbed

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/lazypull/lazypull/dataplane"
)

// DataPlane is a running data plane of a Lazypulld: who it is and what it
// serves.
type DataPlane struct {
	Dir    string
	Info   dataplane.Info
	Mounts []dataplane.Mount
}

// DataPlanes returns the data planes that answer under the daemon's root,
// whether or not the daemon runs.
func (l *Lazypulld) DataPlanes(ctx context.Context) ([]DataPlane, error) {
	socks, err := filepath.Glob(filepath.Join(l.Root, "dataplanes", "*", "sock"))
	if err != nil {
		return nil, err
	}
	var out []DataPlane
	for _, s := range socks {
		c := dataplane.NewClient(s)
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		info, err := c.Info(cctx)
		var mounts []dataplane.Mount
		if err == nil {
			mounts, err = c.Mounts(cctx)
		}
		cancel()
		c.Close()
		if err != nil {
			continue // exited meanwhile
		}
		out = append(out, DataPlane{Dir: filepath.Dir(s), Info: info, Mounts: mounts})
	}
	return out, nil
}

// logDataPlanes prints the logs of the daemon's data planes.
func (l *Lazypulld) logDataPlanes(t T) {
	logs, _ := filepath.Glob(filepath.Join(l.Root, "dataplanes", "*", "log"))
	for _, p := range logs {
		t.Logf("----- data plane log (%s) -----\n%s\n----- end of data plane log -----", p, tail(p, logTailBytes))
	}
}

// stopDataPlanes stops the daemon's data planes and unmounts their layers
// with the daemon's own command, then kills whatever data plane of this
// root is still running.
func (l *Lazypulld) stopDataPlanes() error {
	var errs []error
	empty := filepath.Join(l.Dir, "stop.toml")
	if err := writeFile(empty, ""); err != nil {
		return err
	}
	cmd := exec.Command(l.opts.Binary, "--config", empty, "--root", l.Root, "--stop-data-planes")
	cmd.WaitDelay = 5 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		errs = append(errs, fmt.Errorf("lazypulld --stop-data-planes: %v: %s", err, out))
	}
	if n, err := killDataPlanes(l.Root); err != nil {
		errs = append(errs, err)
	} else if n > 0 {
		errs = append(errs, fmt.Errorf("killed %d data planes that --stop-data-planes left running", n))
	}
	return errors.Join(errs...)
}

// killDataPlanes kills the data plane processes of root (their command
// line is "... data-plane <root>/dataplanes/<id>") and returns how many
// there were.
func killDataPlanes(root string) (int, error) {
	procs, err := listProcs()
	if err != nil {
		return 0, err
	}
	prefix := filepath.Join(root, "dataplanes") + string(filepath.Separator)
	var pids []int
	for pid, p := range procs {
		if i := slices.Index(p.args, "data-plane"); i >= 0 && i+1 < len(p.args) && strings.HasPrefix(p.args[i+1], prefix) {
			pids = append(pids, pid)
		}
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range pids {
		for syscall.Kill(pid, 0) == nil && time.Now().Before(deadline) {
			if st, err := os.ReadFile(filepath.Join("/proc", fmt.Sprint(pid), "stat")); err != nil || strings.Contains(string(st), ") Z ") {
				break // gone or a zombie, to be reaped by init
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return len(pids), nil
}
