package testbed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/client"
)

// SnapshotterName is the name lazypulld is registered under in containerd.
const SnapshotterName = "lazypull"

// NamespacePrefix starts the name of the containerd namespace each
// Containerd uses by default; a unique suffix keeps the cgroups (/<ns>/<id>)
// of concurrent test beds apart.
const NamespacePrefix = "lazypull-test-"

// ContainerdOptions configures StartContainerd.
type ContainerdOptions struct {
	Flavour Flavour
	// LazypullSocket, when set, registers lazypulld as the proxy snapshot
	// plugin SnapshotterName with the configuration the README gives
	// (contrib/containerd); LazypullRoot is exported as its root (2.x).
	LazypullSocket string
	LazypullRoot   string
	// HostsDir is the registry hosts directory (config_path) of the CRI
	// plugin; default: an empty directory.
	HostsDir string
	// CRI, when set, turns containerd's CRI plugin on.
	CRI *CRIOptions
	// Namespace defaults to NamespacePrefix plus a unique suffix.
	Namespace string
	// Dir is the directory of this containerd, made by the caller with
	// testbed.Dir(t, "ctrd") to know the socket path (<Dir>/containerd.sock)
	// ahead; default: a new one.
	Dir string
}

// Containerd is a running containerd with its own root, state, sockets and
// configuration.
type Containerd struct {
	Flavour    Flavour
	Dir        string
	Root       string
	State      string
	Address    string // gRPC socket
	ConfigPath string
	LogPath    string
	// RuncRoot is passed to runc (ctr run --runc-root) so that container
	// state stays inside Dir.
	RuncRoot  string
	Namespace string
	proc      *process
}

// StartContainerd starts containerd for t; at cleanup it removes every task
// and container, stops containerd, kills leftover shims and containers of
// this instance and unmounts and removes its directory.
func StartContainerd(t T, opts ContainerdOptions) *Containerd {
	t.Helper()
	if err := opts.Flavour.check(); err != nil {
		t.Fatal(err)
	}
	dir := opts.Dir
	if dir == "" {
		dir = Dir(t, "ctrd")
	}
	c := &Containerd{
		Flavour:    opts.Flavour,
		Dir:        dir,
		Root:       filepath.Join(dir, "root"),
		State:      filepath.Join(dir, "state"),
		Address:    ContainerdSocket(dir),
		ConfigPath: filepath.Join(dir, "config.toml"),
		LogPath:    filepath.Join(dir, "containerd.log"),
		RuncRoot:   filepath.Join(dir, "runc"),
		Namespace:  opts.Namespace,
	}
	if c.Namespace == "" {
		c.Namespace = NamespacePrefix + strings.TrimPrefix(filepath.Base(dir), "lp-ctrd-")
	}
	if opts.HostsDir == "" {
		opts.HostsDir = filepath.Join(dir, "certs.d")
	}
	if err := c.writeConfig(opts); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "PATH="+c.Flavour.BinDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	p, err := startProcess(t, "containerd "+c.Flavour.Name, c.LogPath, env,
		c.Flavour.bin("containerd"), "--config", c.ConfigPath, "--log-level", "debug")
	if err != nil {
		t.Fatal(err)
	}
	c.proc = p
	t.Cleanup(func() {
		for _, err := range c.teardown() {
			t.Errorf("stop containerd %s: %v", c.Flavour.Name, err)
		}
	})
	err = waitFor(context.Background(), p, 30*time.Second, func(ctx context.Context) error {
		_, err := c.Ctr(ctx, "version")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// writeConfig writes containerd's config.toml and, with lazypulld, the
// lazypull configuration of contrib/containerd with the bed's paths: a
// drop-in the main file imports (2.x), or sections appended to it (1.x).
func (c *Containerd) writeConfig(opts ContainerdOptions) error {
	cfg := c.config(opts)
	if opts.LazypullSocket != "" {
		lp, err := lazypullConfig(c.Flavour, opts)
		if err != nil {
			return err
		}
		if c.Flavour.ConfigVersion >= 3 {
			if err := writeFile(c.dropInPath(), lp); err != nil {
				return err
			}
		} else {
			cfg += "\n" + lp
		}
	}
	return writeFile(c.ConfigPath, cfg)
}

// ContainerdSocket is the gRPC socket of the containerd whose directory
// (ContainerdOptions.Dir) is dir.
func ContainerdSocket(dir string) string { return filepath.Join(dir, "containerd.sock") }

func (c *Containerd) dropInPath() string { return filepath.Join(c.Dir, "lazypull.toml") }

// LazypullConfigPath is the file that holds c's lazypull configuration (the
// proxy plugin): the drop-in config.toml imports on 2.x, config.toml itself
// on 1.x.
func (c *Containerd) LazypullConfigPath() string {
	if c.Flavour.ConfigVersion >= 3 {
		return c.dropInPath()
	}
	return c.ConfigPath
}

func (c *Containerd) config(opts ContainerdOptions) string {
	var b strings.Builder
	q := strconv.Quote
	plug := func(id string) string { // section name of a plugin's config
		if c.Flavour.ConfigVersion >= 3 {
			return "plugins.'" + id + "'"
		}
		return "plugins." + q(id)
	}
	var disabled []string
	if opts.CRI == nil {
		disabled = append(disabled, q("io.containerd.grpc.v1.cri"))
		if c.Flavour.ConfigVersion >= 3 {
			disabled = append(disabled, q("io.containerd.cri.v1.images"), q("io.containerd.cri.v1.runtime"),
				q("io.containerd.podsandbox.controller.v1.podsandbox"))
		}
	}
	if c.Flavour.ConfigVersion >= 3 {
		disabled = append(disabled, q("io.containerd.nri.v1.nri"))
	}
	imports := ""
	if opts.LazypullSocket != "" && c.Flavour.ConfigVersion >= 3 {
		imports = q(c.dropInPath())
	}
	fmt.Fprintf(&b, "version = %d\nroot = %s\nstate = %s\nimports = [%s]\ndisabled_plugins = [%s]\n\n",
		c.Flavour.ConfigVersion, q(c.Root), q(c.State), imports, strings.Join(disabled, ", "))
	fmt.Fprintf(&b, "[grpc]\n  address = %s\n\n[ttrpc]\n  address = %s\n\n", q(c.Address), q(c.Address+".ttrpc"))
	fmt.Fprintf(&b, "[%s]\n  path = %s\n\n", plug("io.containerd.internal.v1.opt"), q(filepath.Join(c.Dir, "opt")))
	if opts.CRI != nil {
		b.WriteString(c.criConfig(*opts.CRI, opts.HostsDir))
	}
	if opts.LazypullSocket == "" && c.Flavour.ConfigVersion >= 3 {
		fmt.Fprintf(&b, "[[%s.unpack_config]]\n  platform = %s\n  snapshotter = \"overlayfs\"\n  differ = \"walking\"\n\n",
			plug("io.containerd.transfer.v1.local"), q("linux/"+runtime.GOARCH))
	}
	return b.String()
}

// CtrCommand returns the command that runs this containerd's ctr with args
// in c.Namespace, for a caller that wants its output as it comes.
func (c *Containerd) CtrCommand(ctx context.Context, args ...string) *exec.Cmd {
	full := append([]string{"--address", c.Address, "--namespace", c.Namespace}, args...)
	cmd := exec.CommandContext(ctx, c.Flavour.bin("ctr"), full...)
	cmd.Env = append(os.Environ(), "PATH="+c.Flavour.BinDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Ctr runs this containerd's ctr with args in c.Namespace and returns its
// stdout. The error carries the command line, exit status and stderr.
func (c *Containerd) Ctr(ctx context.Context, args ...string) (string, error) {
	cmd := c.CtrCommand(ctx, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("ctr %s: %w\nstdout:\n%s\nstderr:\n%s",
			strings.Join(args, " "), err, tailString(stdout.String(), 8<<10), tailString(stderr.String(), 8<<10))
	}
	return stdout.String(), nil
}

// Pull pulls ref over plain HTTP and unpacks it into snapshotter.
func (c *Containerd) Pull(ctx context.Context, snapshotter, ref string) error {
	_, err := c.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", snapshotter, ref)
	return err
}

// Run runs ref as container id with snapshotter, with args as the process
// arguments (replacing entrypoint and command), removes the container when
// it exits and returns the process's stdout.
func (c *Containerd) Run(ctx context.Context, snapshotter, ref, id string, args ...string) (string, error) {
	return c.Ctr(ctx, c.runArgs(snapshotter, ref, id, args)...)
}

// RunCommand returns the ctr command that Run runs, for a caller that wants
// the container's output as it comes.
func (c *Containerd) RunCommand(ctx context.Context, snapshotter, ref, id string, args ...string) *exec.Cmd {
	return c.CtrCommand(ctx, c.runArgs(snapshotter, ref, id, args)...)
}

// RunCommandWith is RunCommand with more flags of `ctr run` (a bind mount,
// say) before the image reference.
func (c *Containerd) RunCommandWith(ctx context.Context, snapshotter, ref, id string, flags []string, args ...string) *exec.Cmd {
	return c.CtrCommand(ctx, c.runArgsWith(snapshotter, ref, id, flags, args)...)
}

// RunDetached starts ref as container id with snapshotter, with args as
// the process arguments, and returns once it runs; the test bed's teardown
// kills and removes it.
func (c *Containerd) RunDetached(ctx context.Context, snapshotter, ref, id string, args ...string) error {
	_, err := c.Ctr(ctx, append([]string{"run", "-d", "--snapshotter", snapshotter, "--runc-root", c.RuncRoot,
		"--fifo-dir", filepath.Join(c.Dir, "fifo"), ref, id}, args...)...)
	return err
}

// Exec runs args in the running container id as process execID and
// returns its stdout.
func (c *Containerd) Exec(ctx context.Context, id, execID string, args ...string) (string, error) {
	return c.Ctr(ctx, append([]string{"task", "exec", "--exec-id", execID, "--fifo-dir", filepath.Join(c.Dir, "fifo"), id}, args...)...)
}

// InNamespace returns a Containerd that speaks to c's containerd in
// namespace ns. Only c tears the containerd down.
func (c *Containerd) InNamespace(ns string) *Containerd {
	n := *c
	n.Namespace = ns
	return &n
}

func (c *Containerd) runArgs(snapshotter, ref, id string, args []string) []string {
	return c.runArgsWith(snapshotter, ref, id, nil, args)
}

func (c *Containerd) runArgsWith(snapshotter, ref, id string, flags, args []string) []string {
	a := []string{"run", "--rm", "--snapshotter", snapshotter, "--runc-root", c.RuncRoot,
		"--fifo-dir", filepath.Join(c.Dir, "fifo")}
	a = append(a, flags...)
	return append(append(a, ref, id), args...)
}

// Client returns a containerd Go client for c, with c.Namespace as default
// namespace, closed at cleanup.
func (c *Containerd) Client(t T) *client.Client {
	t.Helper()
	cl, err := client.New(c.Address, client.WithDefaultNamespace(c.Namespace), client.WithTimeout(10*time.Second))
	if err != nil {
		t.Fatalf("connect to containerd %s: %v", c.Flavour.Name, err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func tailString(s string, max int) string {
	if len(s) <= max {
		return s
	}
	return "(...)" + s[len(s)-max:]
}

// teardown removes containers and tasks while containerd still runs, stops
// it and kills whatever of it outlived it. It returns everything that went
// wrong; the directory itself is cleaned by Dir's cleanup.
func (c *Containerd) teardown() []error {
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if !c.proc.exited() {
		if err := c.removeContainers(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if err := c.proc.stop(10 * time.Second); err != nil {
		errs = append(errs, err)
	}
	if n, err := killShims(c.Address, c.RuncRoot); err != nil {
		errs = append(errs, err)
	} else if n > 0 {
		errs = append(errs, fmt.Errorf("killed %d leftover shim or container processes", n))
	}
	if err := removeCgroups(c.Namespace); err != nil {
		errs = append(errs, err)
	}
	return errs
}

// removeContainers kills every task and deletes every container (with its
// snapshot) in every namespace.
func (c *Containerd) removeContainers(ctx context.Context) error {
	cl, err := client.New(c.Address, client.WithTimeout(10*time.Second))
	if err != nil {
		return err
	}
	defer cl.Close()
	nss, err := cl.NamespaceService().List(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, ns := range nss {
		nctx := withNamespace(ctx, ns)
		cs, err := cl.Containers(nctx)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, ctr := range cs {
			if task, err := ctr.Task(nctx, nil); err == nil {
				if _, err := task.Delete(nctx, client.WithProcessKill); err != nil {
					errs = append(errs, fmt.Errorf("delete task %s/%s: %w", ns, ctr.ID(), err))
				}
			}
			if err := ctr.Delete(nctx, client.WithSnapshotCleanup); err != nil {
				errs = append(errs, fmt.Errorf("delete container %s/%s: %w", ns, ctr.ID(), err))
			}
		}
	}
	return errors.Join(errs...)
}
