package main

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/lazypull/lazypull/config"
	"github.com/lazypull/lazypull/doctor"
)

// exitDoctorFailed is the exit status of doctor when a check failed.
const exitDoctorFailed = 1

func doctorCommand() *cli.Command {
	return &cli.Command{
		Name:      "doctor",
		Usage:     "check that this node can pull images lazily, and say what to change",
		ArgsUsage: " ",
		Description: `Checks containerd's configuration (as the installed containerd reads it,
imports included), lazypulld's configuration, the hosts.toml directories of
both, /dev/fuse, overlayfs and FUSE passthrough, and asks the running
lazypulld and containerd. With --image, also the credentials lazypulld would
use for the image (never shown), and with --check-registry whether the
registry accepts them and the image's layers are eStargz.

Prints one line per check: OK, WARN (lazy pulls work, something costs speed
or works only for some clients), FAIL (lazy pulls will not work) or SKIP,
with what was found and what to change. Exits 1 when a check failed.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Value: config.DefaultPath, Usage: "lazypulld's configuration `FILE`"},
			&cli.StringFlag{Name: "address", Usage: "lazypulld's `SOCKET`, when it runs with --address (default: from its configuration)"},
			&cli.StringFlag{Name: "root", Usage: "lazypulld's state `DIR`, when it runs with --root (default: from its configuration)"},
			&cli.StringFlag{Name: "containerd-config", Value: "/etc/containerd/config.toml", Usage: "containerd's configuration `FILE`"},
			&cli.StringFlag{Name: "containerd-address", Value: "/run/containerd/containerd.sock", Usage: "containerd's `SOCKET` (empty: do not ask the running containerd)"},
			&cli.StringFlag{Name: "containerd-version", Usage: "check for this containerd `VERSION` (default: the running containerd's, else `containerd --version`'s)"},
			&cli.StringFlag{Name: "containerd-binary", Value: "containerd", Usage: "containerd `EXECUTABLE` whose --version to read"},
			&cli.StringFlag{Name: "snapshotter", Value: "lazypull", Usage: "the proxy plugin's `NAME` in containerd's configuration"},
			&cli.StringFlag{Name: "hosts-dir", Value: config.DefaultHostsDir, Usage: "hosts.toml `DIR` of containerd's clients (ctr --hosts-dir, nerdctl, lazypull pull)"},
			&cli.StringSliceFlag{Name: "image", Usage: "check the registry, hosts.toml and credentials of image `REF` (repeatable)"},
			&cli.BoolFlag{Name: "check-registry", Usage: "with --image, ask the registry whether it serves the image with those credentials (network)"},
			&cli.BoolFlag{Name: "cri", Usage: "this node runs Kubernetes: a CRI plugin that does not pull into lazypull is a failure"},
			&cli.BoolFlag{Name: "json", Usage: "print the findings as JSON"},
			&cli.DurationFlag{Name: "timeout", Value: doctorTimeout, Usage: "bound on each call to containerd, lazypulld or a registry"},
		},
		Action: doctorAction,
	}
}

func doctorAction(c *cli.Context) error {
	if err := needArgs(c, 0); err != nil {
		return err
	}
	opts := doctor.Options{
		ContainerdConfig:  c.String("containerd-config"),
		ContainerdVersion: c.String("containerd-version"),
		ContainerdBinary:  c.String("containerd-binary"),
		ContainerdAddress: c.String("containerd-address"),
		Snapshotter:       c.String("snapshotter"),
		HostsDir:          c.String("hosts-dir"),
		Lazypull:          lazypullSettings(c),
		CRI:               c.Bool("cri"),
		Images:            c.StringSlice("image"),
		CheckRegistry:     c.Bool("check-registry"),
		Timeout:           c.Duration("timeout"),
	}
	report := doctor.Run(c.Context, opts)
	var err error
	if c.Bool("json") {
		err = report.WriteJSON(c.App.Writer)
	} else {
		f, ok := c.App.Writer.(*os.File)
		err = report.WriteText(c.App.Writer, ok && isTTY(f) && os.Getenv("NO_COLOR") == "")
	}
	if err != nil {
		return err
	}
	if report.Failed() {
		return cli.Exit("", exitDoctorFailed)
	}
	return nil
}

// lazypullSettings loads lazypulld's configuration as lazypulld would
// (a missing default file means the defaults), with --address and --root
// applied on top as lazypulld's flags are.
func lazypullSettings(c *cli.Context) doctor.Lazypull {
	path := c.String("config")
	l := doctor.Lazypull{ConfigPath: path}
	cfg, err := config.Load(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		l.ConfigMissing = true
		if c.IsSet("config") {
			l.ConfigErr = err
		}
		cfg = config.Default()
	case err != nil:
		l.ConfigErr = err
		cfg = config.Default()
	}
	for _, k := range cfg.Removed {
		l.ConfigRemoved = append(l.ConfigRemoved, k.String())
	}
	if c.IsSet("address") {
		cfg.Address = c.String("address")
	}
	if c.IsSet("root") {
		cfg.Root = c.String("root")
	}
	l.Address, l.Root, l.HostsDir = cfg.Address, cfg.Root, cfg.Remote.HostsDir
	l.CacheDir = cfg.Cache.Dir
	if l.CacheDir == "" {
		l.CacheDir = filepath.Join(cfg.Root, "cache")
	}
	l.Disabled, l.Passthrough = cfg.FS.Disable, cfg.FS.Passthrough
	return l
}
