package remote

import (
	"reflect"
	"testing"
)

func TestParseContentRange(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want contentRange
		ok   bool
	}{
		{"bytes 0-9/100", contentRange{0, 9, 100}, true},
		{"bytes 90-99/*", contentRange{90, 99, -1}, true},
		{"bytes 10-9/100", contentRange{}, false},
		{"bytes -10/100", contentRange{}, false},
		{"bytes */100", contentRange{}, false},
		{"items 0-9/100", contentRange{}, false},
		{"", contentRange{}, false},
	} {
		got, err := parseContentRange(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseContentRange(%q) = %v, %v", tc.in, got, err)
		}
	}
}

func TestCoalesce(t *testing.T) {
	type s struct{ off, end int64 }
	for _, tc := range []struct {
		name string
		in   []Range
		want []s
	}{
		{"disjoint, sorted", []Range{{50, 10}, {0, 10}}, []s{{0, 10}, {50, 60}}},
		{"adjacent", []Range{{0, 10}, {10, 10}}, []s{{0, 20}}},
		{"overlapping", []Range{{0, 10}, {5, 10}, {2, 3}}, []s{{0, 15}}},
		{"zero length dropped", []Range{{5, 0}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []s
			for _, sp := range coalesce(tc.in) {
				got = append(got, s{sp.off, sp.end})
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("coalesce(%v) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
}
