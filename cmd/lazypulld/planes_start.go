package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/moby/sys/mountinfo"
	toml "github.com/pelletier/go-toml/v2"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/config"
	"github.com/lazypull/lazypull/dataplane"
)

const (
	// planesDir, under the root, holds one directory per data plane.
	planesDir = "dataplanes"
	// planeStartTimeout bounds how long a data plane may take to serve.
	planeStartTimeout = 30 * time.Second
	// askTimeout bounds the calls that find out who a data plane is.
	askTimeout = 5 * time.Second
	// logTailBytes bounds how much of a dead data plane's log is logged.
	logTailBytes = 2048
)

// newPlanes finds the data planes of cfg's root, adopts those that answer
// and starts one of this build if none of them is. It needs no network and
// waits for no layer. A data plane that cannot be started is logged, not
// fatal: Mount tries again, and fails (the layer falls back) meanwhile.
func newPlanes(ctx context.Context, cfg *config.Config) (*planes, error) {
	build, err := buildID()
	if err != nil {
		return nil, fmt.Errorf("build id: %w", err)
	}
	p := &planes{
		dir:   filepath.Join(cfg.Root, planesDir),
		cfg:   cfg,
		build: build,
		byID:  map[string]*plane{},
		owner: map[string]*plane{},
	}
	p.life, p.cancel = context.WithCancel(log.WithLogger(context.Background(), log.G(ctx)))
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return nil, err
	}
	p.discover(ctx)
	if _, err := p.ensureCurrent(ctx); err != nil {
		log.G(ctx).WithError(err).Error("cannot start a data plane; layers are pulled normally until one starts")
	}
	p.mu.Lock()
	old := make([]*plane, 0, len(p.byID))
	for _, pl := range p.byID {
		old = append(old, pl)
	}
	p.mu.Unlock()
	for _, pl := range old {
		p.drain(ctx, pl)
	}
	return p, nil
}

// discover adopts the data planes that answer under p.dir and removes the
// directories of those that do not.
func (p *planes) discover(ctx context.Context) {
	ents, err := os.ReadDir(p.dir)
	if err != nil {
		log.G(ctx).WithError(err).Warn("list data planes")
		return
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(p.dir, e.Name())
		if _, err := os.Lstat(filepath.Join(dir, planeSocket)); errors.Is(err, os.ErrNotExist) {
			// It exited cleanly (its socket went with it), or never served.
			removePlaneDir(ctx, dir, "")
			continue
		}
		pl, mounts, err := p.adopt(ctx, e.Name(), dir)
		if err != nil {
			removePlaneDir(ctx, dir, fmt.Sprintf("it does not answer (%v)", err))
			continue
		}
		mounts = forgetUnmounted(ctx, pl, mounts)
		log.G(ctx).WithFields(log.Fields{
			"pid": pl.info.PID, "version": pl.info.Version, "data_plane": pl.id,
			"layers": len(mounts), "same_build": pl.info.Build == p.build,
		}).Info("adopted running data plane")
		p.mu.Lock()
		p.registerLocked(pl, mounts)
		p.mu.Unlock()
	}
}

// adopt connects to the data plane in dir and asks what it serves.
func (p *planes) adopt(ctx context.Context, id, dir string) (*plane, []dataplane.Mount, error) {
	ctx, cancel := context.WithTimeout(ctx, askTimeout)
	defer cancel()
	c := dataplane.NewClient(filepath.Join(dir, planeSocket))
	pl, err := connect(ctx, id, dir, c)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	mounts, err := c.Mounts(ctx)
	if err != nil {
		pl.watch.close()
		c.Close()
		return nil, nil, err
	}
	return pl, mounts, nil
}

// forgetUnmounted has pl forget the mounts it lists whose mountpoint is
// not mounted any more (unmounted behind its back, as the snapshotter does
// with a layer whose Mount it gave up on), and returns the others: a
// record left so would keep an old data plane from ever draining.
func forgetUnmounted(ctx context.Context, pl *plane, mounts []dataplane.Mount) []dataplane.Mount {
	infos, err := mountinfo.GetMounts(nil)
	if err != nil {
		return mounts
	}
	mounted := map[string]bool{}
	for _, m := range infos {
		mounted[m.Mountpoint] = true
	}
	kept := mounts[:0]
	for _, m := range mounts {
		if mounted[m.Mountpoint] {
			kept = append(kept, m)
			continue
		}
		if err := pl.client.Unmount(ctx, m.Mountpoint); err != nil && !errdefs.IsNotFound(err) {
			log.G(ctx).WithError(err).WithField("mountpoint", m.Mountpoint).Warn("data plane lists a mount that is gone")
		}
	}
	return kept
}

// connect asks the data plane behind c who it is and watches its process.
// It asks again once it watches, so that a pid reused after the data
// plane died is not taken for it.
func connect(ctx context.Context, id, dir string, c *dataplane.Client) (*plane, error) {
	info, err := c.Info(ctx)
	if err != nil {
		return nil, err
	}
	w, err := watchPID(info.PID)
	if err != nil {
		return nil, err
	}
	if again, err := c.Info(ctx); err != nil || again.PID != info.PID {
		w.close()
		return nil, fmt.Errorf("data plane %d gone while connecting: %v", info.PID, err)
	}
	return &plane{id: id, dir: dir, client: c, info: info, watch: w, gone: make(chan struct{})}, nil
}

// ensureCurrent returns the current data plane, starting one if none runs.
func (p *planes) ensureCurrent(ctx context.Context) (*plane, error) {
	p.mu.Lock()
	cur, closed := p.current, p.closed
	p.mu.Unlock()
	if cur != nil {
		return cur, nil
	}
	if closed {
		return nil, fmt.Errorf("lazypulld is stopping")
	}
	p.startMu.Lock()
	defer p.startMu.Unlock()
	p.mu.Lock()
	cur = p.current
	p.mu.Unlock()
	if cur != nil {
		return cur, nil
	}
	pl, err := p.start(ctx)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	seed := p.seed
	p.mu.Unlock()
	if seed != nil {
		seed(ctx, pl.client)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, fmt.Errorf("lazypulld is stopping")
	}
	p.registerLocked(pl, nil)
	return pl, nil
}

// start starts a data plane of this binary and waits until it serves.
func (p *planes) start(ctx context.Context) (_ *plane, retErr error) {
	id := randomID()
	dir := filepath.Join(p.dir, id)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			removePlaneDir(ctx, dir, "it failed to start")
		}
	}()
	doc, err := toml.Marshal(p.cfg)
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, planeConfig), doc, 0o600)
	}
	if err != nil {
		return nil, fmt.Errorf("data plane configuration: %w", err)
	}
	cmd, ready, err := spawn(dir)
	if err != nil {
		return nil, err
	}
	defer ready.Close()
	w, err := watchPID(cmd.Process.Pid)
	_ = cmd.Process.Release() // watched and reaped through the pidfd
	if err != nil {
		_ = syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
		return nil, err
	}
	kill := func() {
		_ = syscall.Kill(w.pid, syscall.SIGKILL)
		_ = w.wait()
		w.reap()
		w.close()
	}
	_ = ready.SetReadDeadline(time.Now().Add(planeStartTimeout))
	unblock := context.AfterFunc(ctx, func() { _ = ready.SetReadDeadline(time.Now()) })
	line, err := bufio.NewReader(ready).ReadString('\n')
	unblock()
	if err != nil || line != "ready\n" {
		kill()
		return nil, fmt.Errorf("data plane did not start: %v (see its log above)", err)
	}
	w.close()
	cctx, cancel := context.WithTimeout(ctx, askTimeout)
	defer cancel()
	c := dataplane.NewClient(filepath.Join(dir, planeSocket))
	pl, err := connect(cctx, id, dir, c)
	if err != nil {
		c.Close()
		_ = syscall.Kill(w.pid, syscall.SIGKILL)
		_, _ = unix.Wait4(w.pid, nil, 0, nil)
		return nil, err
	}
	log.G(ctx).WithFields(log.Fields{"pid": pl.info.PID, "data_plane": id, "version": version}).Info("started data plane")
	return pl, nil
}

// spawn starts `lazypulld data-plane dir` from this very binary, detached:
// in a session of its own, with no parent-death signal, its output in dir's
// log (or the journal, if the daemon's goes there). It returns the command
// and the read end of the pipe on which the data plane says it serves.
func spawn(dir string) (*exec.Cmd, *os.File, error) {
	out, err := planeOutput(dir)
	if err != nil {
		return nil, nil, err
	}
	defer out.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	defer w.Close()
	// /proc/self/exe is this binary even when an upgrade replaced its
	// file: a data plane is always of its daemon's build.
	cmd := exec.Command("/proc/self/exe", dataPlaneMode, dir)
	cmd.Args[0] = os.Args[0]
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = out, out
	cmd.ExtraFiles = []*os.File{w}
	cmd.Env = append(planeEnv(), readyFDEnv+"=3")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		r.Close()
		return nil, nil, fmt.Errorf("start data plane: %w", err)
	}
	return cmd, r, nil
}

// planeEnv is the daemon's environment less what is the daemon's alone:
// the service manager's notification and socket variables.
func planeEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_PID", "WATCHDOG_USEC", readyFDEnv:
			continue
		}
		env = append(env, kv)
	}
	return env
}

// planeOutput is where a data plane's stderr goes: the daemon's own, if
// that outlives the daemon and others read it - the journal (systemd says
// so in JOURNAL_STREAM) or a file - so that one log tells what both did;
// otherwise (a pipe, a terminal) dir's log file.
func planeOutput(dir string) (*os.File, error) {
	var st unix.Stat_t
	if unix.Fstat(2, &st) == nil {
		js := os.Getenv("JOURNAL_STREAM")
		if st.Mode&unix.S_IFMT == unix.S_IFREG || (js != "" && js == fmt.Sprintf("%d:%d", st.Dev, st.Ino)) {
			fd, err := unix.Dup(2)
			if err != nil {
				return nil, err
			}
			return os.NewFile(uintptr(fd), "stderr"), nil
		}
	}
	return os.OpenFile(filepath.Join(dir, planeLog), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
}

// removePlaneDir removes the directory of a data plane that is gone. why,
// if not empty, says it is a surprise: the end of its log is logged.
func removePlaneDir(ctx context.Context, dir, why string) {
	if why != "" {
		logger := log.G(ctx).WithField("dir", dir)
		if t := logTail(filepath.Join(dir, planeLog)); t != "" {
			logger = logger.WithField("log_tail", t)
		}
		logger.Warn("removing the directory of a data plane: " + why)
	}
	if err := os.RemoveAll(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.G(ctx).WithError(err).WithField("dir", dir).Warn("remove data plane directory")
	}
}

// logTail returns the last lines of the log at path, at most logTailBytes.
func logTail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(st.Size()-logTailBytes, 0)
	buf := make([]byte, st.Size()-off)
	n, _ := f.ReadAt(buf, off)
	return strings.TrimSpace(string(buf[:n]))
}

func randomID() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
