package testbed

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// logTailBytes bounds how much of a process log is printed on failure.
const logTailBytes = 32 << 10

// logProblemLines bounds how many of a process log's warnings and errors
// are printed on failure, from anywhere in the log: in a long log the
// line that explains a failure is often far before its tail.
const logProblemLines = 100

// process is a daemon started by the test bed, logging to logPath.
type process struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{}
	err     error // valid once done is closed
}

// startProcess starts bin with args, stdout and stderr going to logPath,
// in its own process group, killed if the test binary dies. It registers a
// cleanup that prints the log when t has failed; the caller stops it.
func startProcess(t T, name, logPath string, env []string, bin string, args ...string) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if t.Failed() {
			if w := problems(logPath, logProblemLines); w != "" {
				t.Logf("----- %s log (%s), its warnings and errors -----\n%s\n----- end of %s warnings and errors -----", name, logPath, w, name)
			}
			t.Logf("----- %s log (%s) -----\n%s\n----- end of %s log -----", name, logPath, tail(logPath, logTailBytes), name)
		}
	})
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *process) waitErr() error {
	<-p.done
	return p.err
}

// stop sends SIGTERM and waits up to grace for the process to exit, then
// kills its whole process group. It returns an error if the process had to
// be killed or exited with an error after SIGTERM.
func (p *process) stop(grace time.Duration) error {
	if p.exited() {
		return fmt.Errorf("%s had exited before it was stopped: %v", p.name, p.err)
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		// Children left in the group (helpers the daemon started) go too.
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		var ee *exec.ExitError
		if errors.As(p.err, &ee) && ee.Sys().(syscall.WaitStatus).Signaled() &&
			ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGTERM {
			return nil // died of the signal without a handler
		}
		if p.err != nil {
			return fmt.Errorf("%s exited with %v after SIGTERM", p.name, p.err)
		}
		return nil
	case <-time.After(grace):
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
	return fmt.Errorf("%s did not exit within %v of SIGTERM and was killed", p.name, grace)
}
