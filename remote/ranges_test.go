package remote

import "testing"

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
