package testbed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
)

func withNamespace(ctx context.Context, ns string) context.Context {
	return namespaces.WithNamespace(ctx, ns)
}

// killShims kills every shim started by the containerd listening on address
// (shims put "-address <address>" on their command line) together with all
// their descendants (the containers), then lets runc delete the leftover
// containers in runcRoot so their cgroups go too. It returns how many
// processes it killed.
func killShims(address, runcRoot string) (int, error) {
	procs, err := listProcs()
	if err != nil {
		return 0, err
	}
	kill := map[int]bool{}
	for pid, p := range procs {
		if isShimOf(p.args, address) {
			kill[pid] = true
		}
	}
	for changed := true; changed; { // add descendants
		changed = false
		for pid, p := range procs {
			if !kill[pid] && kill[p.ppid] {
				kill[pid], changed = true, true
			}
		}
	}
	for pid := range kill {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(5 * time.Second)
	for pid := range kill {
		for syscall.Kill(pid, 0) == nil && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	return len(kill), runcDeleteAll(runcRoot)
}

func isShimOf(args []string, address string) bool {
	if len(args) == 0 || !strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") {
		return false
	}
	for i := 0; i+1 < len(args); i++ {
		if (args[i] == "-address" || args[i] == "--address") && args[i+1] == address {
			return true
		}
	}
	return false
}

type procInfo struct {
	ppid int
	args []string
}

func listProcs() (map[int]procInfo, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	procs := map[int]procInfo{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		rest := stat[bytes.LastIndexByte(stat, ')')+1:]
		fields := strings.Fields(string(rest))
		if len(fields) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(fields[1])
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		procs[pid] = procInfo{ppid: ppid, args: args}
	}
	return procs, nil
}

// runcDeleteAll force-deletes every container runc still has state for
// under root/<namespace>/<id>.
func runcDeleteAll(root string) error {
	states, _ := filepath.Glob(filepath.Join(root, "*", "*", "state.json"))
	var errs []error
	for _, s := range states {
		ctrRoot := filepath.Dir(filepath.Dir(s))
		id := filepath.Base(filepath.Dir(s))
		out, err := exec.Command("runc", "--root", ctrRoot, "delete", "--force", id).CombinedOutput()
		if err != nil {
			errs = append(errs, fmt.Errorf("runc delete %s: %v: %s", id, err, out))
		}
	}
	return errors.Join(errs...)
}

// removeCgroups removes the (by now empty) parent cgroup /<namespace> that
// runc creates in every hierarchy for the containers of a namespace.
func removeCgroups(namespace string) error {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", namespace))
	dirs = append(dirs, filepath.Join("/sys/fs/cgroup", namespace)) // cgroup v2 only
	var errs []error
	for _, d := range dirs {
		if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}
