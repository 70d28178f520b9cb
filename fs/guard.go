package fs

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// A panic in a goroutine that no one recovers ends the process, and with
// it every layer the FileSystem serves: a bug met while serving one layer,
// or an input no check foresaw, must fail that work alone. So every
// goroutine the package starts recovers from a panic (guard, or a deferred
// recovered; a test holds every go statement to it), as go-fuse does for
// its handlers (panicHandler), and so does work that others wait for: a
// fetch ends the flights of its chunks with the panic's error, which their
// readers get as EIO. The panic is logged with its stack and counted.

// recovered, deferred, recovers from a panic of the goroutine that
// deferred it: it logs it with its stack and passes onPanic (if not nil)
// the error the work failed with, of class Internal.
func (f *FileSystem) recovered(ctx context.Context, what string, onPanic func(error)) {
	if r := recover(); r != nil {
		f.panicked(ctx, what, r, onPanic)
	}
}

// recovered is FileSystem.recovered for the work of a layer.
func (l *layer) recovered(what string, onPanic func(error)) {
	if r := recover(); r != nil {
		l.fsys.panicked(l.logCtx(), what, r, onPanic)
	}
}

// guard returns fn made to recover from a panic, for a goroutine of its own.
func (f *FileSystem) guard(ctx context.Context, what string, fn func()) func() {
	return func() {
		defer f.recovered(ctx, what, nil)
		fn()
	}
}

// guard is FileSystem.guard for the work of a layer.
func (l *layer) guard(what string, fn func()) func() {
	return func() {
		defer l.recovered(what, nil)
		fn()
	}
}

func (f *FileSystem) panicked(ctx context.Context, what string, r any, onPanic func(error)) {
	err := fmt.Errorf("%s: panic: %v: %w", what, r, errdefs.ErrInternal)
	f.panics.Add(1)
	log.G(ctx).WithError(err).WithField("stack", string(debug.Stack())).Error("recovered from a panic: the work failed, the rest goes on")
	if onPanic != nil {
		onPanic(err)
	}
}

// logCtx is the layer's lifetime with its digest in the log fields.
func (l *layer) logCtx() context.Context {
	return log.WithLogger(l.ctx, log.G(l.ctx).WithField("layer", l.src.dgst))
}

// panicHandler is what go-fuse does with a panic of one of the layer's
// FUSE handlers, which it recovers: the request fails with EIO.
func (l *layer) panicHandler(r any) fuse.Status {
	l.fsys.panicked(l.logCtx(), "FUSE request", r, nil)
	return fuse.EIO
}

// owner owns goroutines: each one spawn starts recovers from a panic, and
// stop refuses new ones and waits for those running. A layer's owner has
// the FileSystem's as parent, which counts its goroutines too, so that
// stopping either waits for them.
type owner struct {
	f       *FileSystem // where panics are counted
	ctx     context.Context
	parent  *owner
	mu      sync.Mutex
	stopped bool
	wg      sync.WaitGroup
	// running counts the goroutines still running: unlike wg, it may be
	// watched while more start.
	running atomic.Int64
}

// spawn runs fn, the work what, in a goroutine of o's. It returns false,
// and does not run fn, once o or its parent is stopping.
func (o *owner) spawn(what string, fn func()) bool {
	if !o.add() {
		return false
	}
	go func() {
		defer o.done()
		defer o.f.recovered(o.ctx, what, nil)
		fn()
	}()
	return true
}

func (o *owner) add() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.stopped || (o.parent != nil && !o.parent.add()) {
		return false
	}
	o.wg.Add(1)
	o.running.Add(1)
	return true
}

func (o *owner) done() {
	o.running.Add(-1)
	o.wg.Done()
	if o.parent != nil {
		o.parent.done()
	}
}

// stop refuses new goroutines and waits for o's to end; the caller has
// told them to (cancelled their context).
func (o *owner) stop() {
	o.mu.Lock()
	o.stopped = true
	o.mu.Unlock()
	o.wg.Wait()
}
