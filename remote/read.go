package remote

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// Answers to range requests are never trusted: a 206 must carry a
// Content-Range that starts and ends where the requested range does and
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
			err = b.readFromSpool(ctx, sp, s)
		case err == nil:
			err = b.stream(resp.Body, 0, s, host, rng)
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

// readRange fetches s with one request. A host may answer a range request
// with a multipart/byteranges body only when asked for several ranges (RFC
// 9110, 14.6), which lazypull never does: such an answer to a single range
// lacks the Content-Range header and is rejected as the wrong bytes.
func (b *Blob) readRange(ctx context.Context, s *span) error {
	rng := s.header()
	resp, err := b.fetch(ctx, rng)
	if err != nil {
		return err
	}
	handed := false // to a spool, which closes it
	defer closeUnlessHanded(resp, &handed)
	host := resp.Request.URL.Host
	if resp.StatusCode == http.StatusOK {
		b.markNoRanges(ctx, host)
		if resp.ContentLength >= 0 && resp.ContentLength != b.size {
			return b.contentError(host, rng, errdefs.ErrDataLoss, false,
				"registry sent %d bytes for a blob of %d", resp.ContentLength, b.size)
		}
		if sp, err := b.spoolAnswer(ctx, resp); sp != nil {
			handed = true
			return b.readFromSpool(ctx, sp, s)
		} else if err != nil {
			return err
		}
		return b.stream(resp.Body, 0, s, host, rng)
	}
	v := resp.Header.Get("Content-Range")
	cr, err := parseContentRange(v)
	if err != nil || cr.size != b.size || cr.first != s.off || cr.last != s.end-1 {
		return b.mismatch(host, rng, v)
	}
	if want := s.end - s.off; resp.ContentLength >= 0 && resp.ContentLength != want {
		return b.contentError(host, rng, errdefs.ErrDataLoss, false,
			"Content-Length %d does not match Content-Range %q", resp.ContentLength, v)
	}
	return b.stream(resp.Body, s.off, s, host, rng)
}

// stream reads s out of body, which starts at blob offset pos.
func (b *Blob) stream(body io.Reader, pos int64, s *span, host, rng string) error {
	if skip := s.off - pos; skip > 0 {
		if n, err := io.CopyN(io.Discard, body, skip); err != nil {
			return b.bodyError(host, rng, err, n, skip)
		}
	}
	if s.buf == nil {
		s.buf = make([]byte, s.end-s.off)
	}
	return b.readSpan(body, s, host, rng)
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
	if b.r.state(host).noRanges.CompareAndSwap(false, true) {
		log.G(ctx).WithField("host", host).Warn("host ignores range requests; blobs from it are fetched whole, once, into spool files")
	}
}
