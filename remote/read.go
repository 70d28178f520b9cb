package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// Answers to range requests are never trusted: a 206 must carry a
// Content-Range that starts and ends where a requested range does and
// names the blob's size, and must hold exactly that many bytes; a 200 means
// the host ignores ranges: the answer goes to the blob's spool (spool.go),
// from which the wanted bytes are read, or, when the blob cannot be
// spooled, they are cut out of the stream.

// readSuffix asks for the last n bytes, learning the blob's size from the
// same answer.
func (b *Blob) readSuffix(ctx context.Context, n int64) ([]byte, error) {
	rng := fmt.Sprintf("bytes=-%d", n)
	resp, err := b.fetch(ctx, rng)
	if err != nil {
		return nil, err
	}
	handed := false // to a spool, which closes it
	defer closeUnlessHanded(resp, &handed)
	host := resp.Request.URL.Host
	if resp.StatusCode == http.StatusOK {
		if err := b.sizeFromWhole(ctx, resp, rng); err != nil {
			return nil, err
		}
		s := &span{off: b.size - min(n, b.size), end: b.size}
		sp, err := b.spoolAnswer(ctx, resp)
		switch {
		case sp != nil:
			handed = true
			err = b.readSpansFrom(ctx, sp, []*span{s}, nil)
		case err == nil:
			err = b.stream(resp.Body, 0, []*span{s}, host, rng, nil)
		}
		if err != nil {
			return nil, err
		}
		return s.buf, nil
	}
	v := resp.Header.Get("Content-Range")
	cr, err := parseContentRange(v)
	if err != nil || cr.size < 0 || cr.last != cr.size-1 || cr.first != cr.size-min(n, cr.size) ||
		(resp.ContentLength >= 0 && resp.ContentLength != cr.last-cr.first+1) {
		return nil, b.mismatch(host, rng, v)
	}
	b.size = cr.size
	buf := make([]byte, cr.last-cr.first+1)
	if err := b.readFull(resp.Body, buf, host, rng); err != nil {
		return nil, err
	}
	return buf, nil
}

// probeSize learns the size from the first byte, for hosts that reject
// suffix ranges.
func (b *Blob) probeSize(ctx context.Context) error {
	const rng = "bytes=0-0"
	resp, err := b.fetch(ctx, rng)
	if err != nil {
		return err
	}
	handed := false // to a spool, which closes it
	defer closeUnlessHanded(resp, &handed)
	host := resp.Request.URL.Host
	if resp.StatusCode == http.StatusOK {
		if err := b.sizeFromWhole(ctx, resp, rng); err != nil {
			return err
		}
		sp, err := b.spoolAnswer(ctx, resp)
		if sp != nil {
			handed = true
			b.r.spools.release(sp) // the download goes on
		}
		return err
	}
	v := resp.Header.Get("Content-Range")
	cr, err := parseContentRange(v)
	if err != nil || cr.first != 0 || cr.last != 0 || cr.size < 1 {
		return b.mismatch(host, rng, v)
	}
	b.size = cr.size
	return b.readFull(resp.Body, make([]byte, 1), host, rng)
}

func (b *Blob) sizeFromWhole(ctx context.Context, resp *http.Response, rng string) error {
	host := resp.Request.URL.Host
	b.markNoRanges(ctx, host)
	if resp.ContentLength < 0 {
		return b.contentError(host, rng, errdefs.ErrNotImplemented, false,
			"registry ignores ranges and sends no Content-Length")
	}
	b.size = resp.ContentLength
	return nil
}

// readSpans fetches spans (sorted, disjoint, at least one) with one request
// and hands each one read to deliver. It returns the spans that the answer
// left out, which the caller fetches one by one; an answer to a single
// range never leaves it out.
func (b *Blob) readSpans(ctx context.Context, spans []*span, deliver func(*span, []byte) error) ([]*span, error) {
	multi := len(spans) > 1
	rng := rangeHeader(spans)
	if multi && b.r.state(b.endpoint()).noRanges.Load() {
		// The whole blob comes anyway; ask for one range in case that changed.
		rng = fmt.Sprintf("bytes=%d-%d", spans[0].off, spans[len(spans)-1].end-1)
	}
	resp, err := b.fetch(ctx, rng)
	if err != nil {
		var e *Error
		if multi && errors.As(err, &e) && (e.Status == http.StatusBadRequest || e.Status == http.StatusRequestedRangeNotSatisfiable) {
			b.markNoMultiRange(ctx, e.Host, fmt.Sprintf("answered %d", e.Status))
			return spans, nil
		}
		return nil, err
	}
	handed := false // to a spool, which closes it
	defer closeUnlessHanded(resp, &handed)
	host := resp.Request.URL.Host
	mediaType, params, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	switch {
	case resp.StatusCode == http.StatusOK:
		b.markNoRanges(ctx, host)
		if resp.ContentLength >= 0 && resp.ContentLength != b.size {
			return nil, b.contentError(host, rng, errdefs.ErrDataLoss, false,
				"registry sent %d bytes for a blob of %d", resp.ContentLength, b.size)
		}
		if sp, err := b.spoolAnswer(ctx, resp); sp != nil {
			handed = true
			return nil, b.readSpansFrom(ctx, sp, spans, deliver)
		} else if err != nil {
			return nil, err
		}
		if err := b.stream(resp.Body, 0, spans, host, rng, deliver); err != nil {
			return nil, err
		}
	case mediaType == "multipart/byteranges":
		if err := b.readParts(multipart.NewReader(resp.Body, params["boundary"]), spans, host, rng, deliver); err != nil {
			return nil, err
		}
	default:
		v := resp.Header.Get("Content-Range")
		first, in, err := b.checkPart(v, spans, host, rng)
		if err != nil {
			return nil, err
		}
		if want := in[len(in)-1].end - first; resp.ContentLength >= 0 && resp.ContentLength != want {
			return nil, b.contentError(host, rng, errdefs.ErrDataLoss, false,
				"Content-Length %d does not match Content-Range %q", resp.ContentLength, v)
		}
		if err := b.stream(resp.Body, first, in, host, rng, deliver); err != nil {
			return nil, err
		}
	}
	var rest []*span
	for _, s := range spans {
		if !s.done {
			rest = append(rest, s)
		}
	}
	if len(rest) > 0 {
		b.markNoMultiRange(ctx, host, "left out ranges")
	}
	return rest, nil
}

// readParts reads a multipart/byteranges body, checking each part.
func (b *Blob) readParts(mr *multipart.Reader, spans []*span, host, rng string, deliver func(*span, []byte) error) error {
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			e := b.contentError(host, rng, errdefs.ErrUnavailable, true, "reading multipart body: %w", err).(*Error)
			e.broken = true
			return e
		}
		v := part.Header.Get("Content-Range")
		first, in, err := b.checkPart(v, spans, host, rng)
		if err != nil {
			return err
		}
		if err := b.stream(part, first, in, host, rng, deliver); err != nil {
			return err
		}
		if n, _ := io.CopyN(io.Discard, part, 1); n > 0 {
			return b.contentError(host, rng, errdefs.ErrDataLoss, false, "part %q holds more bytes than it says", v)
		}
	}
}

// checkPart checks a Content-Range against the spans still wanted: it must
// name the blob's size and start and end where wanted spans do (a server
// may merge ranges, never shift them). It returns where the part starts and
// the spans in it.
func (b *Blob) checkPart(v string, spans []*span, host, rng string) (int64, []*span, error) {
	cr, err := parseContentRange(v)
	if err != nil || cr.size != b.size {
		return 0, nil, b.mismatch(host, rng, v)
	}
	var in []*span
	var startOK, endOK bool
	for _, s := range spans {
		if s.done {
			continue
		}
		startOK = startOK || s.off == cr.first
		endOK = endOK || s.end-1 == cr.last
		if s.off >= cr.first && s.end-1 <= cr.last {
			in = append(in, s)
		}
	}
	if !startOK || !endOK {
		return 0, nil, b.mismatch(host, rng, v)
	}
	return cr.first, in, nil
}

// stream reads spans (sorted) out of body, which starts at blob offset pos.
func (b *Blob) stream(body io.Reader, pos int64, spans []*span, host, rng string, deliver func(*span, []byte) error) error {
	for _, s := range spans {
		if skip := s.off - pos; skip > 0 {
			if n, err := io.CopyN(io.Discard, body, skip); err != nil {
				return b.bodyError(host, rng, err, n, skip)
			}
		}
		if s.buf == nil {
			s.buf = make([]byte, s.end-s.off)
		}
		if err := b.readSpan(body, s, host, rng); err != nil {
			return err
		}
		pos = s.end
		s.done = true
		if deliver != nil {
			if err := deliver(s, s.buf); err != nil {
				return err
			}
		}
	}
	return nil
}

// progressStep is the most a span's reader takes from the body between
// two reports of its progress.
const progressStep = 64 << 10

// readSpan fills s.buf from body, reporting progress to s.progress.
func (b *Blob) readSpan(body io.Reader, s *span, host, rng string) error {
	if s.progress == nil {
		return b.readFull(body, s.buf, host, rng)
	}
	for s.got < len(s.buf) {
		n, err := io.ReadAtLeast(body, s.buf[s.got:min(len(s.buf), s.got+progressStep)], 1)
		s.got += n
		if n > 0 {
			s.progress(s.got)
		}
		if err != nil && s.got < len(s.buf) {
			return b.bodyError(host, rng, err, int64(s.got), int64(len(s.buf)))
		}
	}
	return nil
}

func (b *Blob) readFull(body io.Reader, buf []byte, host, rng string) error {
	n, err := io.ReadFull(body, buf)
	if err != nil {
		return b.bodyError(host, rng, err, int64(n), int64(len(buf)))
	}
	return nil
}

// closeUnlessHanded closes resp's body unless it was handed to a spool.
func closeUnlessHanded(resp *http.Response, handed *bool) {
	if !*handed {
		resp.Body.Close()
	}
}

// bodyError reports an answer whose body broke off after got of the want
// bytes that were read from it.
func (b *Blob) bodyError(host, rng string, err error, got, want int64) error {
	var e error
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		e = b.contentError(host, rng, errdefs.ErrUnavailable, true, "short body: got %d of %d bytes", got, want)
	} else {
		e = b.netError(host, rng, err)
	}
	if be, ok := e.(*Error); ok {
		be.broken = true
	}
	return e
}

func (b *Blob) mismatch(host, rng, contentRange string) error {
	got := strings.TrimPrefix(contentRange, "bytes ")
	if contentRange == "" {
		got = "(no Content-Range)"
	}
	return b.contentError(host, rng, errdefs.ErrDataLoss, false,
		"registry returned bytes %s for request %s", got, strings.TrimPrefix(rng, "bytes="))
}

func (b *Blob) markNoRanges(ctx context.Context, host string) {
	st := b.r.state(host)
	st.noMultiRange.Store(true)
	if st.noRanges.CompareAndSwap(false, true) {
		log.G(ctx).WithField("host", host).Warn("host ignores range requests; blobs from it are fetched whole, once, into spool files")
	}
}

func (b *Blob) markNoMultiRange(ctx context.Context, host, why string) {
	if b.r.state(host).noMultiRange.CompareAndSwap(false, true) {
		log.G(ctx).WithFields(log.Fields{"host": host, "reason": why}).Info("host does not answer multi-range requests correctly; using single ranges")
	}
}
