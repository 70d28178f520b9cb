package remote

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Range is a part of a blob: Length bytes from Offset.
type Range struct{ Offset, Length int64 }

func (r Range) end() int64 { return r.Offset + r.Length }

// span is a run of blob bytes [off, end) fetched as one piece: one or more
// requested ranges that are adjacent or overlap.
type span struct {
	off, end int64
	rs       []Range
	// buf, if set, receives the bytes (len(buf) == end-off).
	buf  []byte
	done bool
	// progress, if set, is told how many bytes of buf are in as they
	// arrive; got is that count.
	progress func(n int)
	got      int
}

// coalesce sorts ranges and merges adjacent or overlapping ones into spans.
// Zero-length ranges are dropped; the caller handles them.
func coalesce(rs []Range) []*span {
	sorted := make([]Range, 0, len(rs))
	for _, r := range rs {
		if r.Length > 0 {
			sorted = append(sorted, r)
		}
	}
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Offset < sorted[j].Offset })
	var spans []*span
	for _, r := range sorted {
		if n := len(spans); n > 0 && r.Offset <= spans[n-1].end {
			s := spans[n-1]
			s.end = max(s.end, r.end())
			s.rs = append(s.rs, r)
			continue
		}
		spans = append(spans, &span{off: r.Offset, end: r.end(), rs: []Range{r}})
	}
	return spans
}

// rangeHeader formats spans as the value of a Range header.
func rangeHeader(spans []*span) string {
	parts := make([]string, len(spans))
	for i, s := range spans {
		parts[i] = fmt.Sprintf("%d-%d", s.off, s.end-1)
	}
	return "bytes=" + strings.Join(parts, ",")
}

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
