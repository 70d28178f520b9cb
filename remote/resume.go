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

// readSpansResuming is readSpans, asking again for the spans still missing
// when an answer breaks off. A span whose reader is told of progress goes
// on from the bytes it has (they were reported, so they stay); other spans
// start over.
func (b *Blob) readSpansResuming(ctx context.Context, spans []*span, deliver func(*span, []byte) error) ([]*span, error) {
	var rest []*span
	err := b.again(ctx, func() error {
		var err error
		rest, err = b.readSpans(ctx, pending(spans), deliver)
		return err
	})
	return rest, err
}

// pending returns the spans not done yet, a span with progress as the part
// after the bytes it has.
func pending(spans []*span) []*span {
	out := make([]*span, 0, len(spans))
	for _, s := range spans {
		switch {
		case s.done:
		case s.progress != nil && s.got > 0:
			whole, base := s, s.got
			out = append(out, &span{off: s.off + int64(base), end: s.end, rs: s.rs, buf: s.buf[base:],
				progress: func(n int) {
					whole.got = base + n
					whole.progress(base + n)
				}})
		default:
			out = append(out, s)
		}
	}
	return out
}
