package config

import (
	"math"
	"testing"
	"time"
)

func TestDurationText(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"0s", 0},
		{"500ms", 500 * time.Millisecond},
		{"30s", 30 * time.Second},
		{"1h30m", 90 * time.Minute},
	} {
		var d Duration
		if err := d.UnmarshalText([]byte(tc.in)); err != nil || d.Duration != tc.want {
			t.Errorf("UnmarshalText(%q) = %v, %v; want %v", tc.in, d.Duration, err, tc.want)
		}
		out, _ := d.MarshalText()
		var back Duration
		if err := back.UnmarshalText(out); err != nil || back != d {
			t.Errorf("round trip of %q through %q = %v, %v", tc.in, out, back, err)
		}
	}
	for _, in := range []string{"", "30", "1.5", "-1s", "soon", "true", "30 s"} {
		var d Duration
		if err := d.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("UnmarshalText(%q) = %v, want an error", in, d.Duration)
		}
	}
}

func TestSizeText(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Size
	}{
		{"0", 0},
		{"4096", 4096},
		{"4096B", 4096},
		{"512KiB", 512 << 10},
		{"64MiB", 64 << 20},
		{"64 mib", 64 << 20},
		{"10GiB", 10 << 30},
		{"2TiB", 2 << 40},
		{"500kB", 500_000},
		{"20MB", 20_000_000},
		{"1GB", 1_000_000_000},
		{"3TB", 3_000_000_000_000},
		{"16777215TiB", 16777215 << 40},
		{"18446744073709551615", math.MaxUint64},
	} {
		var s Size
		if err := s.UnmarshalText([]byte(tc.in)); err != nil || s != tc.want {
			t.Errorf("UnmarshalText(%q) = %d, %v; want %d", tc.in, s, err, tc.want)
		}
		out, _ := s.MarshalText()
		var back Size
		if err := back.UnmarshalText(out); err != nil || back != s {
			t.Errorf("round trip of %q through %q = %d, %v", tc.in, out, back, err)
		}
	}
	for _, in := range []string{"", "MiB", "-1", "1.5GiB", "12 parsecs", "64 MiB extra", "16777216TiB", "18446744073709551616", "0x10"} {
		var s Size
		if err := s.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("UnmarshalText(%q) = %d, want an error", in, s)
		}
	}
}

func TestSizeString(t *testing.T) {
	for s, want := range map[Size]string{0: "0", 1000: "1000", 1024: "1KiB", 64 * MiB: "64MiB", 1536 * MiB: "1536MiB", 3 * TiB: "3TiB"} {
		if got := s.String(); got != want {
			t.Errorf("Size(%d).String() = %q, want %q", uint64(s), got, want)
		}
	}
	if got := Size(math.MaxUint64).Int64(); got != math.MaxInt64 {
		t.Errorf("Int64 of a huge size = %d, want it capped", got)
	}
}
