package remote

import (
	"context"
	"errors"

	"github.com/containerd/log"
)

// An answer can break off part way: its body stalls (no byte for the stall
// timeout), its connection is cut, or it ends early. The retry layer of the
// transport cannot help then, since it has handed the answer over; the
// reads of a Blob ask again instead, for the bytes they are still missing.

// brokenOff reports whether err is an answer that broke off for a reason
// that may go away: asking again may succeed.
func brokenOff(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.broken && e.temporary
}

// again runs read until it succeeds, fails other than by an answer that
// broke off, or has been tried WithRetries times more, waiting with
// backoff in between.
func (b *Blob) again(ctx context.Context, read func() error) error {
	for attempt := 0; ; attempt++ {
		err := read()
		if err == nil || attempt >= b.r.opts.retries || ctx.Err() != nil || !brokenOff(err) {
			return err
		}
		log.G(ctx).WithError(err).WithField("attempt", attempt+1).Info("answer broke off, asking again for the rest")
		if err := sleep(ctx, retryDelay(b.r.opts.backoffBase, b.r.opts.backoffMax, attempt, nil)); err != nil {
			return err
		}
		var e *Error
		if errors.As(err, &e) {
			b.r.opts.observer.Retried(e.Host)
		}
	}
}

// readResuming is readRange, asking again for what s still misses when an
// answer breaks off. A span whose reader is told of progress goes on from
// the bytes it has (they were reported, so they stay); another starts over.
func (b *Blob) readResuming(ctx context.Context, s *span) error {
	return b.again(ctx, func() error { return b.readRange(ctx, s.rest()) })
}

// rest is the part of s still to read: s, or, when s's reader was told of
// bytes that are in, the span after them.
func (s *span) rest() *span {
	if s.progress == nil || s.got == 0 {
		return s
	}
	whole, base := s, s.got
	return &span{off: s.off + int64(base), end: s.end, buf: s.buf[base:],
		progress: func(n int) {
			whole.got = base + n
			whole.progress(base + n)
		}}
}
