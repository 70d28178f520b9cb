package config

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"strings"
	"time"
)

// Duration is a length of time written in the file as a Go duration string
// ("500ms", "30s", "1h30m"). A bare number is rejected rather than guessed to
// be seconds or nanoseconds; negative durations are rejected too.
type Duration struct {
	time.Duration
}

// UnmarshalText parses a duration string.
func (d *Duration) UnmarshalText(text []byte) error {
	s := string(text)
	if _, err := strconv.ParseFloat(s, 64); err == nil {
		return fmt.Errorf("duration %s has no unit (write for example \"%ss\")", s, s)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q: want for example \"500ms\", \"30s\" or \"1h30m\"", s)
	}
	if v < 0 {
		return fmt.Errorf("invalid duration %q: must not be negative", s)
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration the way UnmarshalText reads it.
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(d.String()), nil
}

// Size is a number of bytes, written in the file either as an integer or as
// a string with a unit: "4096", "512KiB", "64MiB", "10GiB" (powers of 1024) or
// "500kB", "20MB", "1GB" (powers of 1000). Units are case-insensitive and may
// be separated from the number by a space; the number is a whole number.
type Size uint64

// Binary and decimal size units.
const (
	KiB Size = 1 << (10 * (iota + 1))
	MiB
	GiB
	TiB
)

var sizeUnits = map[string]Size{
	"":    1,
	"b":   1,
	"kib": KiB,
	"mib": MiB,
	"gib": GiB,
	"tib": TiB,
	"kb":  1e3,
	"mb":  1e6,
	"gb":  1e9,
	"tb":  1e12,
}

// UnmarshalText parses a size string.
func (s *Size) UnmarshalText(text []byte) error {
	str := strings.TrimSpace(string(text))
	i := strings.IndexFunc(str, func(r rune) bool { return r < '0' || r > '9' })
	if i < 0 {
		i = len(str)
	}
	num, unit := str[:i], strings.ToLower(strings.TrimSpace(str[i:]))
	mult, ok := sizeUnits[unit]
	if num == "" || !ok {
		return fmt.Errorf("invalid size %q: want a whole number of bytes or a number with a unit such as \"512KiB\", \"64MiB\" or \"1GB\"", str)
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return fmt.Errorf("invalid size %q: too large", str)
		}
		return fmt.Errorf("invalid size %q: %w", str, err)
	}
	hi, lo := bits.Mul64(n, uint64(mult))
	if hi != 0 {
		return fmt.Errorf("invalid size %q: too large", str)
	}
	*s = Size(lo)
	return nil
}

// MarshalText writes the size with the largest binary unit that divides it
// exactly, so that UnmarshalText reads back the same value.
func (s Size) MarshalText() ([]byte, error) {
	return []byte(s.String()), nil
}

// String returns the size as "64MiB", or as a plain number of bytes when no
// binary unit divides it exactly.
func (s Size) String() string {
	for _, u := range []struct {
		name string
		size Size
	}{{"TiB", TiB}, {"GiB", GiB}, {"MiB", MiB}, {"KiB", KiB}} {
		if s != 0 && s%u.size == 0 {
			return strconv.FormatUint(uint64(s/u.size), 10) + u.name
		}
	}
	return strconv.FormatUint(uint64(s), 10)
}

// Int64 returns the size as an int64 for use with file offsets and lengths,
// capped at math.MaxInt64.
func (s Size) Int64() int64 {
	if s > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(s)
}
