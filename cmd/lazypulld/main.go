// Command lazypulld is lazypull's daemon: it serves containerd's snapshots
// API (containerd.services.snapshots.v1) on a unix socket, for containerd to
// load as a proxy snapshotter plugin.
//
// The daemon is the control plane: the snapshots API, the snapshot
// metadata and the overlay mounts. The FUSE filesystems of lazily pulled
// layers, with the chunk cache and the registry client, are served by a
// data plane: the same binary, started by the daemon as
// `lazypulld data-plane <dir>` in a session of its own, which outlives the
// daemon. A daemon that starts adopts the data planes it finds under
// <root>/dataplanes and starts one of its own build if none is; data planes
// of another build keep the layers they serve until those are removed, then
// stop; a data plane that dies is replaced and its layers mounted again.
// The protocol between the two is package dataplane.
//
// Settings come from the command line flags, then the configuration file
// (see config/example.toml), then the defaults. The daemon runs until SIGINT
// or SIGTERM, then finishes the calls in flight (for at most
// shutdownTimeout), closes the snapshotter, removes its socket and exits 0,
// leaving the data planes and their mounts to the next daemon. Under
// systemd (NOTIFY_SOCKET set) it reports READY=1 once it serves and
// STOPPING=1 when it stops. `lazypulld --stop-data-planes` stops the data
// planes of a root whose daemon is stopped and unmounts their layers.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"syscall"

	"github.com/containerd/log"

	"github.com/lazypull/lazypull/config"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	if len(os.Args) > 1 && os.Args[1] == dataPlaneMode {
		os.Exit(runDataPlane(os.Args[2:], os.Stderr))
	}
	os.Exit(run(os.Args, os.Stderr))
}

// flags holds the command line; a nil field was not given.
type flags struct {
	configPath     string
	configExplicit bool
	root           *string
	address        *string
	logLevel       *string
	stopPlanes     bool
}

// run is the whole daemon; it returns the exit status: 0 after a clean
// shutdown, 1 when the daemon could not start or failed, 2 for a bad
// command line.
func run(args []string, stderr io.Writer) int {
	f, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "lazypulld: %v\n", err)
		return 2
	}
	cfg, err := loadConfig(f)
	if err != nil {
		fmt.Fprintf(stderr, "lazypulld: %v\n", err)
		return 1
	}
	if err := setupLogging(cfg, stderr); err != nil {
		fmt.Fprintf(stderr, "lazypulld: %v\n", err)
		return 1
	}
	warnRemoved(cfg)
	if f.stopPlanes {
		if err := stopDataPlanes(cfg, stderr); err != nil {
			fmt.Fprintf(stderr, "lazypulld: %v\n", err)
			return 1
		}
		return 0
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, cfg); err != nil {
		// Printed rather than logged: this is the answer to the person
		// who started the daemon, whatever the log level.
		fmt.Fprintf(stderr, "lazypulld: %v\n", err)
		return 1
	}
	return 0
}

// warnRemoved logs each key of the configuration file that lazypulld no
// longer reads, which the file should lose.
func warnRemoved(cfg *config.Config) {
	for _, k := range cfg.Removed {
		log.L.WithFields(log.Fields{"file": k.File, "line": k.Line, "key": k.Key}).
			Warnf("configuration key removed, ignored: %s", k.Note)
	}
}

// setupLogging sends the log to stderr, as text, at cfg's level.
func setupLogging(cfg *config.Config, stderr io.Writer) error {
	log.L.Logger.SetOutput(stderr)
	if err := log.SetFormat(log.TextFormat); err != nil {
		return err
	}
	if err := log.SetLevel(cfg.LogLevel); err != nil {
		return fmt.Errorf("log_level: %w", err)
	}
	return nil
}

func parseFlags(args []string, stderr io.Writer) (*flags, error) {
	fset := flag.NewFlagSet(args[0], flag.ContinueOnError)
	fset.SetOutput(stderr)
	fset.Usage = func() {
		fmt.Fprintf(stderr, "Usage: %s [flags]\n\nServes containerd's snapshots API for lazy image pulls.\n\nFlags:\n", args[0])
		fset.PrintDefaults()
	}
	var f flags
	var root, address, logLevel string
	var showVersion bool
	fset.BoolVar(&showVersion, "version", false, "print the version and exit")
	fset.StringVar(&f.configPath, "config", config.DefaultPath,
		"configuration `file`; the default file may be missing, a named one may not")
	fset.StringVar(&root, "root", "", "state `directory` (overrides the file's root; default "+config.DefaultRoot+")")
	fset.StringVar(&address, "address", "", "unix socket `path` to serve on (overrides the file's address; default "+config.DefaultAddress+")")
	fset.BoolVar(&f.stopPlanes, "stop-data-planes", false,
		"stop the data planes of the root, unmounting their layers, and exit (for uninstalling; the daemon must be stopped)")
	fset.StringVar(&logLevel, "log-level", "", "trace, debug, info, warn or error (overrides the file's log_level; default "+config.DefaultLogLevel+")")
	if err := fset.Parse(args[1:]); err != nil {
		return nil, err
	}
	if fset.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fset.Arg(0))
	}
	if showVersion {
		fmt.Fprintf(stderr, "lazypulld %s\n", version)
		return nil, flag.ErrHelp
	}
	fset.Visit(func(fl *flag.Flag) {
		switch fl.Name {
		case "config":
			f.configExplicit = true
		case "root":
			f.root = &root
		case "address":
			f.address = &address
		case "log-level":
			f.logLevel = &logLevel
		}
	})
	return &f, nil
}

// loadConfig applies the precedence flag > configuration file > default.
func loadConfig(f *flags) (*config.Config, error) {
	cfg, err := config.Load(f.configPath)
	switch {
	case errors.Is(err, fs.ErrNotExist) && !f.configExplicit:
		cfg = config.Default()
	case err != nil:
		return nil, err
	}
	if f.root != nil {
		cfg.Root = *f.root
	}
	if f.address != nil {
		cfg.Address = *f.address
	}
	if f.logLevel != nil {
		cfg.LogLevel = *f.logLevel
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid settings: %w", err)
	}
	return cfg, nil
}
