package remote

import (
	"fmt"
	"strconv"
	"strings"
)

// span is a run of blob bytes [off, end) read with one request.
type span struct {
	off, end int64
	// buf, if set, receives the bytes (len(buf) == end-off).
	buf []byte
	// progress, if set, is told how many bytes of buf are in as they
	// arrive; got is that count.
	progress func(n int)
	got      int
}

// header is the value of the Range header that asks for s.
func (s *span) header() string { return fmt.Sprintf("bytes=%d-%d", s.off, s.end-1) }

// contentRange is a parsed "bytes first-last/size" Content-Range value;
// size is -1 for "*".
type contentRange struct{ first, last, size int64 }

func (c contentRange) String() string {
	size := "*"
	if c.size >= 0 {
		size = strconv.FormatInt(c.size, 10)
	}
	return fmt.Sprintf("%d-%d/%s", c.first, c.last, size)
}

func parseContentRange(v string) (contentRange, error) {
	bad := fmt.Errorf("malformed Content-Range %q", v)
	rest, ok := strings.CutPrefix(strings.TrimSpace(v), "bytes ")
	if !ok {
		return contentRange{}, bad
	}
	rng, size, ok := strings.Cut(rest, "/")
	if !ok {
		return contentRange{}, bad
	}
	first, last, ok := strings.Cut(rng, "-")
	if !ok {
		return contentRange{}, bad
	}
	var c contentRange
	var err1, err2, err3 error
	c.first, err1 = strconv.ParseInt(first, 10, 64)
	c.last, err2 = strconv.ParseInt(last, 10, 64)
	if size == "*" {
		c.size = -1
	} else {
		c.size, err3 = strconv.ParseInt(size, 10, 64)
	}
	if err1 != nil || err2 != nil || err3 != nil || c.first < 0 || c.last < c.first {
		return contentRange{}, bad
	}
	return c, nil
}
