// Command lazypull is lazypull's command line tool: it converts images to
// eStargz (convert), pulls images through containerd so that their layers
// can be mounted lazily by the lazypull snapshotter (pull), shows what is
// lazy and local of the images pulled (status), and checks a node's setup
// (doctor).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/containerd/log"
	"github.com/urfave/cli/v2"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	os.Exit(run(context.Background(), os.Args, os.Stdout, os.Stderr))
}

// exitUsage is the exit status for a bad command line.
const exitUsage = 2

// doctorTimeout is doctor's default bound on each call it makes.
const doctorTimeout = 10 * time.Second

// run is the whole tool; it returns the exit status: 0 on success, 1 when
// the command failed, 2 for a bad command line, and what a command asks
// for otherwise (pull --require-lazy).
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	// containerd's client logs through containerd/log; keep its info
	// messages out of the tool's output unless asked for.
	log.L.Logger.SetOutput(stderr)
	app := newApp(stdout, stderr)
	app.Before = func(c *cli.Context) error { return log.SetLevel(c.String("log-level")) }
	err := app.RunContext(ctx, args)
	if err == nil {
		return 0
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		if msg := err.Error(); msg != "" {
			fmt.Fprintf(stderr, "lazypull: %s\n", msg)
		}
		return ec.ExitCode()
	}
	fmt.Fprintf(stderr, "lazypull: %v\n", err)
	return 1
}

func newApp(stdout, stderr io.Writer) *cli.App {
	usageErr := func(_ *cli.Context, err error, _ bool) error {
		return cli.Exit(err.Error(), exitUsage)
	}
	cmds := []*cli.Command{convertCommand(), pullCommand(), statusCommand(), doctorCommand(), profileCommand()}
	for _, c := range cmds {
		c.OnUsageError = usageErr
	}
	return &cli.App{
		Name:            "lazypull",
		Version:         version,
		Usage:           "convert images to eStargz and pull them lazily through containerd",
		Writer:          stdout,
		ErrWriter:       stderr,
		Commands:        cmds,
		OnUsageError:    usageErr,
		HideHelpCommand: true,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-level", Value: "warn", Usage: "`LEVEL` of the log messages of containerd's client library (debug, info, warn, error)"},
		},
		// run turns errors into exit statuses; cli must not call os.Exit.
		ExitErrHandler: func(*cli.Context, error) {},
	}
}

// needArgs checks the number of positional arguments.
func needArgs(c *cli.Context, n int) error {
	if c.NArg() != n {
		return cli.Exit(fmt.Sprintf("%s: want %d arguments, got %d\nusage: lazypull %s %s",
			c.Command.Name, n, c.NArg(), c.Command.Name, c.Command.ArgsUsage), exitUsage)
	}
	return nil
}
