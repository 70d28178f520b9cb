package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/config"
	"github.com/lazypull/lazypull/dataplane"
	"github.com/lazypull/lazypull/snapshotter"
)

// planes is the daemon's side of its data planes (see plane.go): it finds
// those running under <root>/dataplanes, starts one of its own build when
// none is running, routes each layer's calls to the data plane that serves
// it, notices when one dies, and stops old ones once they serve nothing.
// It is the snapshotter's FileSystem. What runs per data plane besides
// (following its verification verdicts) is started by watchEach.
//
// The current data plane is the one of the daemon's own build: it gets
// every Mount. Data planes of other builds (left by an older or newer
// lazypulld) keep the layers they serve, get their Check and Unmount
// calls, and are asked to stop once they serve none (a drain).
type planes struct {
	dir   string // <root>/dataplanes
	cfg   *config.Config
	build string // build id of this binary

	// life is the lifetime of the watchers; Close ends it and waits.
	life   context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	startMu sync.Mutex // one start at a time

	mu      sync.Mutex
	byID    map[string]*plane
	current *plane
	owner   map[string]*plane // the data plane serving each mountpoint
	onLost  func(mountpoints []string, reason string)
	// onMounted is told the verification state a Mount answered with.
	onMounted func(ctx context.Context, v dataplane.Verification)
	seed      func(ctx context.Context, c *dataplane.Client) // see setSeed
	each      *planeWatch                                    // what runs for every data plane, if anything
	closed    bool
}

// planeWatch is a function run, in a goroutine of its own, for each data
// plane (see watchEach).
type planeWatch struct {
	ctx context.Context
	fn  func(ctx context.Context, pl *plane)
	wg  sync.WaitGroup
}

// plane is a running data plane.
type plane struct {
	id     string
	dir    string
	client *dataplane.Client
	info   dataplane.Info
	watch  *pidWatch
	gone   chan struct{} // closed when the process has exited
	// life ends when the process has exited (or planes closes).
	life      context.Context
	endOfLife context.CancelFunc
	// draining is set, under planes.mu, once it was asked to stop: its
	// exit is then no surprise.
	draining bool
}

var _ snapshotter.FileSystem = (*planes)(nil)

// setOnLost sets what is told the mountpoints of a data plane that died:
// the snapshotter's Remount.
func (p *planes) setOnLost(fn func(mountpoints []string, reason string)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.onLost = fn
}

// setOnMounted sets what is told, before Mount returns, the verification
// state of the layer it mounted: a verdict known at once (a layer verified
// before, or by the Mount in the before-commit mode) then reaches the
// snapshotter before the snapshot is committed.
func (p *planes) setOnMounted(fn func(ctx context.Context, v dataplane.Verification)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.onMounted = fn
}

// watchEach runs fn, in a goroutine of its own, for every data plane
// known now or later (adopted, started, replacements), with a context that
// ends when that data plane has exited, when ctx ends or when stop is
// called; stop waits for those goroutines. One watchEach at a time.
func (p *planes) watchEach(ctx context.Context, fn func(ctx context.Context, pl *plane)) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	w := &planeWatch{ctx: ctx, fn: fn}
	p.mu.Lock()
	p.each = w
	for _, pl := range p.byID {
		p.startWatchLocked(w, pl)
	}
	p.mu.Unlock()
	return func() {
		p.mu.Lock()
		if p.each == w {
			p.each = nil
		}
		p.mu.Unlock()
		cancel()
		w.wg.Wait()
	}
}

// startWatchLocked runs w for pl. The caller holds mu.
func (p *planes) startWatchLocked(w *planeWatch, pl *plane) {
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		ctx, cancel := context.WithCancel(w.ctx)
		defer cancel()
		defer context.AfterFunc(pl.life, cancel)()
		w.fn(log.WithLogger(ctx, log.G(ctx).WithFields(log.Fields{"data_plane": pl.id, "pid": pl.info.PID})), pl)
	}()
}

// setSeed sets what is given a data plane this daemon starts, before its
// first Mount: the CRI image service's credentials.
func (p *planes) setSeed(fn func(ctx context.Context, c *dataplane.Client)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seed = fn
}

// clients returns the clients of the running data planes.
func (p *planes) clients() []*dataplane.Client {
	p.mu.Lock()
	defer p.mu.Unlock()
	cs := make([]*dataplane.Client, 0, len(p.byID))
	for _, pl := range p.byID {
		cs = append(cs, pl.client)
	}
	return cs
}

// Mount mounts the layer on the current data plane, starting one if none
// runs.
func (p *planes) Mount(ctx context.Context, mountpoint string, labels map[string]string) error {
	pl, err := p.ensureCurrent(ctx)
	if err != nil {
		return fmt.Errorf("no data plane to serve the layer: %w", err)
	}
	v, err := pl.client.Mount(ctx, mountpoint, labels)
	if err != nil {
		if ctx.Err() != nil {
			// The data plane may finish a Mount its caller gave up on:
			// undo it, or the layer stays mounted with nobody to use it.
			p.undoMount(ctx, pl, mountpoint)
		}
		return err
	}
	p.mu.Lock()
	select {
	case <-pl.gone:
		p.mu.Unlock()
		return fmt.Errorf("data plane %d exited while it mounted the layer: %w", pl.info.PID, errdefs.ErrUnavailable)
	default:
	}
	p.owner[mountpoint] = pl
	onMounted := p.onMounted
	p.mu.Unlock()
	if v != nil && onMounted != nil {
		onMounted(ctx, *v)
	}
	return nil
}

// undoMount unmounts mountpoint on pl, waiting (for at most askTimeout)
// for the Mount still in progress there to end.
func (p *planes) undoMount(ctx context.Context, pl *plane, mountpoint string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), askTimeout)
	defer cancel()
	for {
		err := pl.client.Unmount(ctx, mountpoint)
		if err == nil || errdefs.IsNotFound(err) {
			return
		}
		if !errdefs.IsConflict(err) || ctx.Err() != nil {
			log.G(ctx).WithError(err).WithField("mountpoint", mountpoint).Warn("undo an abandoned mount")
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Check asks the data plane serving mountpoint; a mountpoint no data plane
// serves is an error of class NotFound.
func (p *planes) Check(ctx context.Context, mountpoint string, labels map[string]string) error {
	pl := p.ownerOf(mountpoint)
	if pl == nil {
		return fmt.Errorf("no data plane serves %s: %w", mountpoint, errdefs.ErrNotFound)
	}
	return pl.client.Check(ctx, mountpoint, labels)
}

// Unmount asks the data plane serving mountpoint to unmount it, and drains
// that data plane if it is an old one left with nothing to serve. A mount
// no data plane serves (its server died) is detached.
func (p *planes) Unmount(ctx context.Context, mountpoint string) error {
	pl := p.ownerOf(mountpoint)
	if pl == nil {
		err := unix.Unmount(mountpoint, unix.MNT_DETACH)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("no data plane serves %s: %w", mountpoint, errdefs.ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("detach %s: %w", mountpoint, err)
		}
		return nil
	}
	err := pl.client.Unmount(ctx, mountpoint)
	if err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	p.mu.Lock()
	if p.owner[mountpoint] == pl {
		delete(p.owner, mountpoint)
	}
	p.mu.Unlock()
	p.drain(ctx, pl)
	return err
}

func (p *planes) ownerOf(mountpoint string) *plane {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.owner[mountpoint]
}

// countLocked returns how many mountpoints pl serves. The caller holds mu.
func (p *planes) countLocked(pl *plane) int {
	n := 0
	for _, o := range p.owner {
		if o == pl {
			n++
		}
	}
	return n
}

// drain asks pl to stop if it is not the current data plane and serves
// nothing.
func (p *planes) drain(ctx context.Context, pl *plane) {
	p.mu.Lock()
	if pl == p.current || pl.draining || p.countLocked(pl) > 0 {
		p.mu.Unlock()
		return
	}
	pl.draining = true
	p.mu.Unlock()
	logger := log.G(ctx).WithFields(log.Fields{"pid": pl.info.PID, "version": pl.info.Version, "data_plane": pl.id})
	if err := pl.client.Shutdown(ctx, false); err != nil {
		p.mu.Lock()
		pl.draining = false
		p.mu.Unlock()
		logger.WithError(err).Warn("old data plane not stopped")
		return
	}
	logger.Info("old data plane serves no layer any more; it stops")
}

// lost is called once the process of pl has exited.
func (p *planes) lost(pl *plane) {
	p.mu.Lock()
	delete(p.byID, pl.id)
	var mps []string
	for mp, o := range p.owner {
		if o == pl {
			mps = append(mps, mp)
			delete(p.owner, mp)
		}
	}
	if p.current == pl {
		p.current = nil
	}
	expected, onLost, closed := pl.draining, p.onLost, p.closed
	p.mu.Unlock()
	pl.client.Close()
	logger := log.G(p.life).WithFields(log.Fields{
		"pid": pl.info.PID, "version": pl.info.Version, "data_plane": pl.id, "layers": len(mps),
	})
	if expected && len(mps) == 0 {
		logger.Info("data plane exited")
		removePlaneDir(p.life, pl.dir, "")
		return
	}
	logger.WithField("mountpoints", mps).Error("data plane exited unexpectedly: reads of its layers fail (ENOTCONN) until they are mounted again")
	removePlaneDir(p.life, pl.dir, "it exited unexpectedly")
	if closed {
		return
	}
	if len(mps) > 0 && onLost != nil {
		// The re-mounts start the replacement.
		onLost(mps, fmt.Sprintf("data plane %d (lazypulld %s) exited", pl.info.PID, pl.info.Version))
		return
	}
	// Have the replacement ready for the next Mount.
	if _, err := p.ensureCurrent(p.life); err != nil {
		logger.WithError(err).Error("cannot start a data plane; layers are pulled normally until one starts")
	}
}

// register adds pl, serving mounts, and starts watching it. The caller
// holds mu.
func (p *planes) registerLocked(pl *plane, mounts []dataplane.Mount) {
	p.byID[pl.id] = pl
	pl.life, pl.endOfLife = context.WithCancel(p.life)
	if p.each != nil {
		p.startWatchLocked(p.each, pl)
	}
	for _, m := range mounts {
		p.owner[m.Mountpoint] = pl
	}
	if p.current == nil && pl.info.Build == p.build {
		p.current = pl
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		if err := pl.watch.wait(); err != nil {
			if pl.life.Err() != nil {
				return // Close
			}
			// Never silently stop watching: a data plane whose death
			// goes unnoticed leaves its layers failing for good.
			log.G(pl.life).WithError(err).WithFields(log.Fields{"pid": pl.info.PID, "data_plane": pl.id}).
				Warn("cannot wait for the data plane's process; checking it every second instead")
			if !pl.watch.poll(pl.life, time.Second) {
				return
			}
		}
		pl.watch.reap()
		pl.watch.close()
		close(pl.gone)
		pl.endOfLife()
		p.lost(pl)
	}()
}

// Close stops watching the data planes and leaves them running.
func (p *planes) Close() error {
	p.mu.Lock()
	p.closed = true
	all := make([]*plane, 0, len(p.byID))
	for _, pl := range p.byID {
		all = append(all, pl)
	}
	p.mu.Unlock()
	p.cancel()
	for _, pl := range all {
		pl.watch.close()
	}
	p.wg.Wait()
	for _, pl := range all {
		pl.client.Close()
	}
	return nil
}
