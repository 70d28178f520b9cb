// Package doctor checks whether a node can pull images lazily with lazypull,
// and says for each finding what to change.
//
// It reads containerd's configuration the way the installed containerd
// reads it (imports, version migration, the merge rules of 1.6 and of 1.7
// and later), lazypulld's settings as the caller loaded them, the hosts.toml
// directories of both, the kernel's FUSE, overlayfs and FUSE passthrough
// support, and, when they run, asks lazypulld (a snapshots API call) and
// containerd (version, plugins) directly. Optionally it looks up the
// credentials lazypulld would use for an image and asks the registry
// whether it accepts them.
//
// Run returns a Report: one Finding per check, each OK, WARN, FAIL or SKIP.
// A FAIL is something that stops lazy pulls (every layer would be pulled in
// full, or pulls would fail); a WARN costs speed, disk accounting or works
// only for some clients. Findings never contain a secret: credentials are
// named by where they come from and the user name, never by value.
//
// The package imports no other package of lazypull: the caller (cmd/lazypull)
// turns lazypull's configuration into Options.
package doctor

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"
)

// Status is the verdict of one check.
type Status int

const (
	// OK: nothing to change.
	OK Status = iota
	// Skip: the check does not apply here or could not run; nothing to change.
	Skip
	// Warn: lazy pulls work, but something costs speed or works only for
	// some clients.
	Warn
	// Fail: something stops lazy pulls.
	Fail
)

func (s Status) String() string {
	switch s {
	case OK:
		return "OK"
	case Skip:
		return "SKIP"
	case Warn:
		return "WARN"
	case Fail:
		return "FAIL"
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// MarshalText makes a Status a string in JSON.
func (s Status) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Finding is the result of one check.
type Finding struct {
	// Check names what was checked, e.g. "containerd.proxy_plugin" or
	// "hosts 127.0.0.1:5000"; stable for tools reading the JSON.
	Check  string `json:"check"`
	Status Status `json:"status"`
	// Found says what was found.
	Found string `json:"found"`
	// Fix says what to change; empty when nothing needs to.
	Fix string `json:"fix,omitempty"`
}

// Report is every finding of a run, in the order the checks ran.
type Report struct {
	Findings []Finding `json:"findings"`
}

// Count returns how many findings have status s.
func (r Report) Count(s Status) int {
	n := 0
	for _, f := range r.Findings {
		if f.Status == s {
			n++
		}
	}
	return n
}

// Failed reports whether some finding would stop lazy pulls.
func (r Report) Failed() bool { return r.Count(Fail) > 0 }

// Lazypull is lazypulld's configuration as the caller loaded it, flags
// applied.
type Lazypull struct {
	// ConfigPath is the file the settings came from (for messages).
	ConfigPath string
	// ConfigMissing: there is no file at ConfigPath; the defaults apply.
	ConfigMissing bool
	// ConfigErr: the file could not be loaded (lazypulld would not start);
	// the other fields hold the defaults.
	ConfigErr error
	// ConfigRemoved says, one message each, which keys of the file
	// lazypulld no longer reads: it starts, ignores them and warns.
	ConfigRemoved []string
	// Address is the socket lazypulld serves on, Root its state directory,
	// HostsDir its hosts.toml directory ("" for none) and CacheDir its
	// chunk cache.
	Address, Root, HostsDir, CacheDir string
	// Disabled: [fs] disable, lazy pulling is off.
	Disabled bool
	// Passthrough: [fs] passthrough.
	Passthrough bool
}

// Options configures Run.
type Options struct {
	// ContainerdConfig is containerd's main configuration file.
	ContainerdConfig string
	// ContainerdVersion ("1.7.22", "v2.1.0") overrides detection; detection
	// asks the running containerd, then runs ContainerdBinary --version,
	// then guesses from the configuration's version.
	ContainerdVersion string
	// ContainerdBinary is the containerd executable (looked up in PATH
	// when it has no slash); empty skips running it.
	ContainerdBinary string
	// ContainerdAddress is containerd's socket; empty skips the checks of
	// the running containerd.
	ContainerdAddress string
	// Snapshotter is the proxy plugin's name in containerd's configuration.
	Snapshotter string
	// HostsDir is the hosts.toml directory containerd's clients (ctr
	// --hosts-dir, nerdctl, lazypull pull) use; the CRI's comes from
	// containerd's configuration.
	HostsDir string
	// Lazypull is lazypulld's configuration.
	Lazypull Lazypull
	// CRI says the node runs Kubernetes: a CRI plugin that does not pull
	// into lazypull is a failure, not a warning.
	CRI bool
	// Images are image references whose registries and credentials are
	// checked.
	Images []string
	// CheckRegistry lets the credential check ask each image's registry
	// whether it accepts the credentials (network).
	CheckRegistry bool
	// Env is the environment lazypulld looks up credentials with (HOME,
	// DOCKER_CONFIG, PATH for credential helpers, ...). nil means that of
	// the running lazypulld when it can be read, else this process's.
	Env []string
	// Timeout bounds each call to containerd, lazypulld or a registry
	// (default 10s).
	Timeout time.Duration
}

// run holds what the checks share while they run.
type run struct {
	opts    Options
	report  Report
	version ctrdVersion
	cfg     *ctrdConfig // nil when it could not be loaded
	daemon  daemonInfo  // the running lazypulld, when found
	cri     criInfo     // how the CRI plugin pulls, when it pulls into the snapshotter
}

// Run checks the node. It never returns an error: what could not be
// checked is a finding of its own.
func Run(ctx context.Context, opts Options) Report {
	if opts.Snapshotter == "" {
		opts.Snapshotter = "lazypull"
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	r := &run{opts: opts}
	r.checkLazypullConfig()
	live := r.connectContainerd(ctx)
	r.version = r.detectVersion(ctx, live)
	r.loadContainerdConfig()
	r.checkProxyPlugin()
	r.checkExports()
	r.checkUnpackConfig()
	r.checkCRI()
	r.checkDaemon(ctx)
	r.checkRunningContainerd(ctx, live)
	r.checkKernel()
	r.checkHosts(ctx)
	r.checkImages(ctx)
	if live != nil {
		live.Close()
	}
	return r.report
}

func (r *run) add(check string, s Status, found, fix string) {
	r.report.Findings = append(r.report.Findings, Finding{Check: check, Status: s, Found: found, Fix: fix})
}

// checkLazypullConfig reports on lazypulld's own configuration file.
func (r *run) checkLazypullConfig() {
	l := r.opts.Lazypull
	const check = "lazypull.config"
	switch {
	case l.ConfigErr != nil:
		r.add(check, Fail, fmt.Sprintf("lazypulld would not start: %v", l.ConfigErr),
			"fix the file (every key is documented in config/example.toml)")
	case l.Disabled:
		r.add(check, Fail, fmt.Sprintf("%s sets [fs] disable = true: lazy pulling is off, every layer is pulled in full", l.ConfigPath),
			"remove disable = true from [fs] and restart lazypulld")
	case l.ConfigMissing:
		r.add(check, OK, fmt.Sprintf("no %s: lazypulld runs with the defaults (socket %s, root %s)", l.ConfigPath, l.Address, l.Root), "")
	default:
		r.add(check, OK, fmt.Sprintf("%s: socket %s, root %s, hosts_dir %s", l.ConfigPath, l.Address, l.Root, orNone(l.HostsDir)), "")
	}
	for _, msg := range l.ConfigRemoved {
		r.add("lazypull.config.removed", Warn, msg, "remove the key from "+l.ConfigPath)
	}
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// envMap turns KEY=VALUE pairs into a map (the last one of a key wins).
func envMap(env []string) map[string]string {
	m := make(map[string]string, len(env))
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

// sameFile reports whether two paths name the same file: equal once
// cleaned, or the same inode (symlinks, /var/run and /run).
func sameFile(a, b string) bool {
	if a == "" || b == "" {
		return a == b
	}
	if cleanPath(a) == cleanPath(b) {
		return true
	}
	sa, errA := os.Stat(a)
	sb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(sa, sb)
}
