// Package config owns lazypulld's configuration file: the TOML schema, its
// defaults and its validation.
//
// The file is read strictly: an unknown key, a value of the wrong type or a
// value out of range is an error that names the key (and, for the first two,
// the line), so that a typo cannot silently leave a default in force. The
// package only describes settings; turning them into options of the packages
// that use them is the job of cmd/lazypulld.
//
// Sections ([remote], [fs], [cache]) will be added as tables of Config when
// the daemon wires them; every key documented here is in example.toml, with
// its default value.
package config

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
)

// Default locations, also used by the command line flags.
const (
	// DefaultPath is where lazypulld looks for its configuration file.
	DefaultPath = "/etc/lazypull/config.toml"
	// DefaultRoot is the default state directory.
	DefaultRoot = "/var/lib/lazypull"
	// DefaultAddress is the default socket path.
	DefaultAddress = "/run/lazypull/lazypull.sock"
	// DefaultLogLevel is the default log level.
	DefaultLogLevel = "info"
)

// LogLevels are the values accepted by Config.LogLevel, most verbose first.
var LogLevels = []string{"trace", "debug", "info", "warn", "error"}

// Config is the content of lazypulld's configuration file. The zero value is
// not valid; start from Default or Load.
type Config struct {
	// Root is the directory that holds lazypulld's state: the snapshot
	// metadata database, the snapshot directories and the lock file that
	// keeps a second daemon off the same state. It must be an absolute path;
	// it is created (mode 0700) when missing.
	Root string `toml:"root"`

	// Address is the path of the unix socket on which lazypulld serves
	// containerd's snapshots API (the address of the proxy_plugins entry in
	// containerd's configuration). It must be an absolute path; its parent
	// directory is created when missing.
	Address string `toml:"address"`

	// LogLevel is the least severe level that is logged: one of trace,
	// debug, info, warn or error.
	LogLevel string `toml:"log_level"`
}

// Default returns the configuration used when no file is given.
func Default() *Config {
	return &Config{
		Root:     DefaultRoot,
		Address:  DefaultAddress,
		LogLevel: DefaultLogLevel,
	}
}

// Validate checks the values that decoding alone cannot check. Each error
// names the key it is about; all problems are reported at once.
func (c *Config) Validate() error {
	var errs []error
	if err := absPath(c.Root); err != nil {
		errs = append(errs, fmt.Errorf("root: %w", err))
	}
	if err := absPath(c.Address); err != nil {
		errs = append(errs, fmt.Errorf("address: %w", err))
	}
	if !slices.Contains(LogLevels, c.LogLevel) {
		errs = append(errs, fmt.Errorf("log_level: %q is not one of %v", c.LogLevel, LogLevels))
	}
	return errors.Join(errs...)
}

func absPath(p string) error {
	switch {
	case p == "":
		return errors.New("must not be empty")
	case !filepath.IsAbs(p):
		return fmt.Errorf("%q is not an absolute path", p)
	case filepath.Clean(p) == "/":
		return errors.New(`must not be "/"`)
	}
	return nil
}
