package fs

import (
	"context"
	"fmt"
	"runtime/debug"

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
