package testbed

import "testing"

// The front's 503 rule picks requests by the offsets their Range names.
func TestRangeCovers(t *testing.T) {
	for _, tc := range []struct {
		h    string
		off  int64
		want bool
	}{
		{"bytes=0-99", 50, true},
		{"bytes=0-99", 100, false},
		{"bytes=10-19,200-299", 250, true},
		{"bytes=10-19,200-299", 100, false},
		{"bytes=100-", 1 << 40, true},
		{"bytes=-100", 5, false}, // a suffix needs the size
		{"", 0, false},
	} {
		if got := rangeCovers(tc.h, tc.off); got != tc.want {
			t.Errorf("rangeCovers(%q, %d) = %v, want %v", tc.h, tc.off, got, tc.want)
		}
	}
}
