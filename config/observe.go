package config

import (
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
)

// Values of snapshotter.fallback.
const (
	// FallbackPull has containerd download and apply a layer that cannot
	// be mounted lazily, as a snapshotter without lazy pulling would.
	FallbackPull = "pull"
	// FallbackError fails the pull of such a layer instead.
	FallbackError = "error"
)

// FallbackModes are the values of snapshotter.fallback.
var FallbackModes = []string{FallbackPull, FallbackError}

// Snapshotter is the [snapshotter] table.
type Snapshotter struct {
	// Fallback is what becomes of a layer offered for a lazy pull that
	// cannot be mounted lazily (not eStargz, no TOC digest annotation, the
	// registry refused, ...): "pull" lets containerd download and apply
	// it, and every layer above it, the normal way (the snapshot's
	// fallback label says why); "error" fails the pull with an error that
	// names the layer and the reason, for nodes where a silent full pull
	// is worse than a failed one.
	Fallback string `toml:"fallback"`
}

func (s *Snapshotter) validate() []error {
	if !slices.Contains(FallbackModes, s.Fallback) {
		return []error{fmt.Errorf("snapshotter.fallback: %q is not one of %v", s.Fallback, FallbackModes)}
	}
	return nil
}

// Metrics is the [metrics] table: lazypulld's Prometheus metrics.
type Metrics struct {
	// Address is where lazypulld serves its metrics, at /metrics, in
	// Prometheus' text format: an absolute path for a unix socket (mode
	// 0660, like address), or host:port for TCP (for example
	// "127.0.0.1:9142"; the metrics name registry hosts, not credentials).
	// Empty, the default, turns the metrics off.
	Address string `toml:"address"`

	// MaxHosts bounds the registry hosts that get series of their own in
	// the metrics, per data plane: the hosts first seen once this many are
	// counted are counted under the host "other".
	MaxHosts int `toml:"max_hosts"`
}

// IsUnix reports whether Address is a unix socket path.
func (m *Metrics) IsUnix() bool { return strings.HasPrefix(m.Address, "/") }

func (m *Metrics) validate(address, criAddress string) []error {
	var errs []error
	switch {
	case m.Address == "":
	case m.IsUnix():
		if err := absPath(m.Address); err != nil {
			errs = append(errs, fmt.Errorf("metrics.address: %w", err))
		}
		for _, other := range []string{address, criAddress} {
			if other != "" && filepath.Clean(other) == filepath.Clean(m.Address) {
				errs = append(errs, fmt.Errorf("metrics.address: %q is also the socket of another service", m.Address))
			}
		}
	default:
		if _, port, err := net.SplitHostPort(m.Address); err != nil || port == "" {
			errs = append(errs, fmt.Errorf("metrics.address: %q is neither an absolute path (unix socket) nor host:port", m.Address))
		}
	}
	if m.MaxHosts < 1 || m.MaxHosts > 1024 {
		errs = append(errs, fmt.Errorf("metrics.max_hosts: %d is not between 1 and 1024", m.MaxHosts))
	}
	return errs
}
