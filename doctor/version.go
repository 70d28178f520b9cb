package doctor

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	containerd "github.com/containerd/containerd/v2/client"
	toml "github.com/pelletier/go-toml/v2"
)

// ctrdVersion is a containerd release and how it was found.
type ctrdVersion struct {
	Major, Minor, Patch int
	Known               bool
	Source              string
}

// parseVersion reads "1.6.20~ds1", "v2.4.2", "2.1.0-rc.1" or
// "2.4.2+unknown".
func parseVersion(s string) (ctrdVersion, error) {
	s = strings.TrimPrefix(strings.TrimSpace(s), "v")
	end := strings.IndexFunc(s, func(c rune) bool { return c != '.' && (c < '0' || c > '9') })
	if end >= 0 {
		s = s[:end]
	}
	parts := strings.Split(s, ".")
	if len(parts) < 2 || len(parts) > 3 {
		return ctrdVersion{}, fmt.Errorf("%q is not a containerd version (like 1.7.22 or 2.1.0)", s)
	}
	var n [3]int
	for i, p := range parts {
		v, err := strconv.Atoi(p)
		if err != nil {
			return ctrdVersion{}, fmt.Errorf("%q is not a containerd version (like 1.7.22 or 2.1.0)", s)
		}
		n[i] = v
	}
	return ctrdVersion{Major: n[0], Minor: n[1], Patch: n[2], Known: true}, nil
}

func (v ctrdVersion) String() string {
	if !v.Known {
		return "(unknown version)"
	}
	return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch)
}

// atLeast reports whether v is major.minor.patch or later.
func (v ctrdVersion) atLeast(major, minor, patch int) bool {
	if v.Major != major {
		return v.Major > major
	}
	if v.Minor != minor {
		return v.Minor > minor
	}
	return v.Patch >= patch
}

// maxConfigVersion is the newest config.toml version v reads.
func (v ctrdVersion) maxConfigVersion() int {
	switch {
	case v.Major < 2:
		return 2
	case v.atLeast(2, 3, 0):
		return 4
	}
	return 3
}

// connectContainerd returns a client of the running containerd, or nil
// when none answers (the finding comes with checkRunningContainerd).
func (r *run) connectContainerd(ctx context.Context) *containerd.Client {
	addr := r.opts.ContainerdAddress
	if addr == "" {
		return nil
	}
	if _, err := os.Stat(strings.TrimPrefix(addr, "unix://")); err != nil {
		return nil // otherwise the client waits for the dial timeout
	}
	c, err := containerd.New(addr, containerd.WithTimeout(r.opts.Timeout))
	if err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
	defer cancel()
	if _, err := c.Version(ctx); err != nil {
		c.Close()
		return nil
	}
	return c
}

// detectVersion finds containerd's version: the flag, else the running
// daemon, else `containerd --version`, else a guess from the config's
// version key. It adds the "containerd.version" finding.
func (r *run) detectVersion(ctx context.Context, live *containerd.Client) ctrdVersion {
	const check = "containerd.version"
	if s := r.opts.ContainerdVersion; s != "" {
		v, err := parseVersion(s)
		if err == nil {
			v.Source = "given"
			r.add(check, OK, fmt.Sprintf("containerd %s (given)", v), "")
			return v
		}
		r.add(check, Warn, err.Error(), "give the version as MAJOR.MINOR.PATCH")
	}
	var running, installed ctrdVersion
	if live != nil {
		ctx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
		if sv, err := live.Version(ctx); err == nil {
			running, _ = parseVersion(sv.Version)
			running.Source = "the running containerd"
		}
		cancel()
	}
	if bin := r.opts.ContainerdBinary; bin != "" {
		vctx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
		out, err := exec.CommandContext(vctx, bin, "--version").Output()
		cancel()
		if err == nil {
			// "containerd github.com/containerd/containerd/v2 2.4.2 <commit>"
			if f := strings.Fields(string(out)); len(f) >= 3 {
				installed, _ = parseVersion(f[2])
				installed.Source = bin + " --version"
			}
		}
	}
	switch {
	case running.Known && installed.Known && running != withSource(installed, running.Source):
		r.add(check, Warn, fmt.Sprintf("containerd %s is running, but %s says %s", running, installed.Source, installed),
			"restart containerd to run the installed version; these checks follow the running one")
		return running
	case running.Known:
		r.add(check, OK, fmt.Sprintf("containerd %s (from %s)", running, running.Source), "")
		return running
	case installed.Known:
		r.add(check, OK, fmt.Sprintf("containerd %s (from %s)", installed, installed.Source), "")
		return installed
	}
	v := guessVersion(r.opts.ContainerdConfig)
	r.add(check, Warn, fmt.Sprintf("containerd's version is unknown (not running, no binary); checking as for %s, from the config's version key", v),
		"give it with --containerd-version")
	return v
}

func withSource(v ctrdVersion, source string) ctrdVersion {
	v.Source = source
	return v
}

// guessVersion maps a config file's version key to the oldest release
// that writes it: 2 -> 1.7, 3 -> 2.0, 4 -> 2.3.
func guessVersion(path string) ctrdVersion {
	v := ctrdVersion{Major: 1, Minor: 7, Known: true, Source: "guessed from the config version"}
	data, err := os.ReadFile(path)
	if err != nil {
		return v
	}
	var head struct {
		Version int `toml:"version"`
	}
	_ = toml.Unmarshal(data, &head)
	switch {
	case head.Version >= 4:
		v.Major, v.Minor = 2, 3
	case head.Version == 3:
		v.Major, v.Minor = 2, 0
	}
	return v
}
