package doctor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"iter"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	srvconfig "github.com/containerd/containerd/v2/cmd/containerd/server/config"
	"github.com/containerd/log"
	"github.com/containerd/plugin"
	toml "github.com/pelletier/go-toml/v2"
	"github.com/sirupsen/logrus"
)

// Plugin IDs of containerd's configuration.
const (
	criV1       = "io.containerd.grpc.v1.cri"   // the CRI plugin of 1.x; its old name on 2.x
	criImagesV2 = "io.containerd.cri.v1.images" // the CRI image service of 2.x
	transferV2  = "io.containerd.transfer.v1.local"
	snapshotter = "io.containerd.snapshotter.v1"
)

// ctrdConfig is containerd's configuration after imports, merges and
// migrations, as the detected containerd version computes it.
type ctrdConfig struct {
	Path     string
	Version  int      // of the main file; 1 for a file without version
	Files    []string // the main file, then the imports in load order
	Plugins  map[string]any
	Proxy    map[string]srvconfig.ProxyPlugin
	Disabled []string
	// ProxyFile is the file that defines each proxy plugin last.
	ProxyFile map[string]string
}

// pluginTable returns the table at path (plugin ID, then keys) or nil.
func (c *ctrdConfig) pluginTable(path ...string) map[string]any {
	var cur any = c.Plugins
	for _, k := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[k]
	}
	m, _ := cur.(map[string]any)
	return m
}

func (c *ctrdConfig) disabled(ids ...string) bool {
	for _, id := range ids {
		if slices.Contains(c.Disabled, id) {
			return true
		}
	}
	return false
}

// loadContainerdConfig loads containerd's configuration into r.cfg and
// reports on it (the "containerd.config" finding).
func (r *run) loadContainerdConfig() {
	const check = "containerd.config"
	path := r.opts.ContainerdConfig
	legacy := r.version.Major == 1 && r.version.Minor <= 6
	files, versions, notes, err := configFiles(path, legacy)
	switch {
	case errors.Is(err, fs.ErrNotExist) && len(files) == 0:
		r.add(check, Fail, fmt.Sprintf("%s does not exist: containerd runs with its defaults, which know no lazypull snapshotter", path),
			"create it with the snippet for your containerd version from the README (\"Configure containerd\"), then restart containerd")
		return
	case err != nil:
		r.add(check, Fail, fmt.Sprintf("containerd would not start: %v", err), "fix the file, then restart containerd")
		return
	}
	main := versions[0]
	if main == 0 {
		main = 1
	}
	maxV := r.version.maxConfigVersion()
	for i, f := range files {
		if v := versions[i]; v > maxV {
			r.add(check, Fail, fmt.Sprintf("%s has version = %d, but containerd %s reads versions up to %d: containerd would not start", f, v, r.version, maxV),
				fmt.Sprintf("write it as version = %d (%s)", maxV, versionHint(maxV)))
			return
		}
	}
	cfg, warnings, err := r.mergeConfig(path)
	if err != nil {
		r.add(check, Fail, fmt.Sprintf("containerd would not start: %v", err), "fix the file, then restart containerd")
		return
	}
	warnings = append(warnings, notes...)
	cfg.Version, cfg.Files = main, files
	cfg.ProxyFile = proxyFiles(files)
	r.cfg = cfg
	found := fmt.Sprintf("%s, version = %d", path, main)
	if len(files) > 1 {
		found += ", imports " + strings.Join(files[1:], ", ")
	}
	switch {
	case len(warnings) > 0:
		r.add(check, Warn, found+"; "+strings.Join(warnings, "; "), "remove or correct what containerd ignores, and write imports as absolute paths")
	case main < maxV && r.version.Major >= 2 && main < 3:
		r.add(check, Warn, found+fmt.Sprintf("; containerd %s migrates it at every start", r.version),
			fmt.Sprintf("write it as version = %d (`containerd config migrate` prints it): in version 3 the CRI keys live under [plugins.'%s']", maxV, criImagesV2))
	default:
		r.add(check, OK, found, "")
	}
}

func versionHint(v int) string {
	switch v {
	case 2:
		return "containerd 1.x"
	case 3:
		return "containerd 2.0 to 2.2"
	}
	return "containerd 2.3 and later"
}

// configFiles lists the main file and its imports in the order containerd
// loads them, with each file's version. legacy is containerd 1.6's rule
// for a relative glob (see resolveImports); notes say where it applied.
func configFiles(path string, legacy bool) (files []string, versions []int, notes []string, err error) {
	pending := []string{path}
	seen := map[string]bool{}
	for len(pending) > 0 {
		p := pending[0]
		pending = pending[1:]
		if seen[p] {
			continue
		}
		seen[p] = true
		data, err := os.ReadFile(p)
		if err != nil {
			return files, versions, notes, err
		}
		var head struct {
			Version int      `toml:"version"`
			Imports []string `toml:"imports"`
		}
		if err := toml.Unmarshal(data, &head); err != nil {
			return files, versions, notes, fmt.Errorf("%s: %w", p, tomlError(err))
		}
		files, versions = append(files, p), append(versions, head.Version)
		imports, n, err := resolveImports(p, head.Imports, legacy)
		if err != nil {
			return files, versions, notes, err
		}
		pending, notes = append(pending, imports...), append(notes, n...)
	}
	return files, versions, notes, nil
}

// resolveImports is containerd's rule: relative to the importing file's
// directory, globs expanded. containerd 1.6 (legacy) expands a relative
// glob against its working directory instead, "/" for a service.
func resolveImports(parent string, imports []string, legacy bool) (out, notes []string, err error) {
	for _, p := range imports {
		p = filepath.Clean(p)
		switch {
		case filepath.IsAbs(p):
		case legacy && strings.Contains(p, "*"):
			notes = append(notes, fmt.Sprintf("containerd 1.6 expands the relative import %q of %s in its working directory (/ for a service), not the file's", p, parent))
			p = filepath.Join("/", p)
		default:
			p = filepath.Join(filepath.Dir(parent), p)
		}
		if !strings.Contains(p, "*") {
			out = append(out, p)
			continue
		}
		matches, err := filepath.Glob(p)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, matches...)
	}
	return out, notes, nil
}

func tomlError(err error) error {
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, col := de.Position()
		return fmt.Errorf("line %d column %d: %v", row, col, de)
	}
	return err
}

// proxyFiles returns, per proxy plugin name, the last file defining it.
func proxyFiles(files []string) map[string]string {
	out := map[string]string{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var c struct {
			Proxy map[string]any `toml:"proxy_plugins"`
		}
		if toml.Unmarshal(data, &c) == nil {
			for name := range c.Proxy {
				out[name] = f
			}
		}
	}
	return out
}

// mergeConfig loads path with its imports. containerd 1.7 and later merge
// plugin tables key by key (containerd's own loader does it here, with the
// CRI keys of version 2 files moved as 2.x moves them); 1.6 replaces a
// plugin's whole table with that of a later file. It returns what
// containerd ignores (unknown keys), one line each.
func (r *run) mergeConfig(path string) (*ctrdConfig, []string, error) {
	if r.version.Major == 1 && r.version.Minor <= 6 {
		return mergeReplacing(path)
	}
	ctx, logs := captureLogs(context.Background())
	maxV := r.version.maxConfigVersion()
	out := &srvconfig.Config{Version: maxV}
	if r.version.Major < 2 {
		out.Version = 2 // 1.7 reads version 2 without migrating it
	}
	if err := srvconfig.LoadConfigWithPlugins(ctx, path, criMigration(maxV), out); err != nil {
		return nil, nil, err
	}
	cfg := &ctrdConfig{Path: path, Plugins: out.Plugins, Proxy: out.ProxyPlugins, Disabled: out.DisabledPlugins}
	if cfg.Plugins == nil {
		cfg.Plugins = map[string]any{}
	}
	var ignored []string
	for _, e := range logs.entries {
		if key, ok := e.Data["key"]; ok && strings.Contains(e.Message, "unknown key") {
			ignored = append(ignored, fmt.Sprintf("containerd ignores the unknown key %q (%v line %v)", key, e.Data["file"], e.Data["row"]))
		}
	}
	return cfg, ignored, nil
}

// criMigration is the part of the CRI image plugin's configuration
// migration (containerd 2.x, plugins/cri/images) that the checks read:
// a file older than the version containerd writes has its
// [plugins."io.containerd.grpc.v1.cri"] keys copied to the image service.
func criMigration(maxVersion int) srvconfig.PluginFunc {
	migrate := func(_ context.Context, v int, plugins map[string]any) error {
		if v >= maxVersion {
			return nil
		}
		src, ok := plugins[criV1].(map[string]any)
		if !ok {
			return nil
		}
		dst, ok := plugins[criImagesV2].(map[string]any)
		if !ok {
			dst = map[string]any{}
		}
		for _, k := range []string{"registry", "max_concurrent_downloads", "image_pull_with_sync_fs"} {
			if val, ok := src[k]; ok {
				dst[k] = val
			}
		}
		// containerd moves these only from a containerd table that has
		// runtimes: without one, they are silently dropped.
		if c, ok := src["containerd"].(map[string]any); ok && c["runtimes"] != nil {
			for _, k := range []string{"snapshotter", "disable_snapshot_annotations", "discard_unpacked_layers"} {
				if val, ok := c[k]; ok {
					dst[k] = val
				}
			}
		}
		plugins[criImagesV2] = dst
		return nil
	}
	return func() iter.Seq[plugin.Registration] {
		if maxVersion < 3 {
			return slices.Values([]plugin.Registration(nil))
		}
		return slices.Values([]plugin.Registration{{Type: "io.containerd.cri.v1", ID: "images", ConfigMigration: migrate}})
	}
}

// mergeReplacing is containerd 1.6's loader: a later file's plugin table
// replaces the earlier one whole; proxy plugins by name; lists appended.
func mergeReplacing(path string) (*ctrdConfig, []string, error) {
	files, _, _, err := configFiles(path, true)
	if err != nil {
		return nil, nil, err
	}
	cfg := &ctrdConfig{Path: path, Plugins: map[string]any{}, Proxy: map[string]srvconfig.ProxyPlugin{}}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, nil, err
		}
		var c struct {
			Disabled []string                         `toml:"disabled_plugins"`
			Plugins  map[string]any                   `toml:"plugins"`
			Proxy    map[string]srvconfig.ProxyPlugin `toml:"proxy_plugins"`
		}
		if err := toml.Unmarshal(data, &c); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", f, tomlError(err))
		}
		maps.Copy(cfg.Plugins, c.Plugins)
		maps.Copy(cfg.Proxy, c.Proxy)
		for _, d := range c.Disabled {
			if !slices.Contains(cfg.Disabled, d) {
				cfg.Disabled = append(cfg.Disabled, d)
			}
		}
	}
	// A file without version uses short plugin names in 1.x.
	if v, ok := cfg.Plugins["cri"]; ok {
		if _, dup := cfg.Plugins[criV1]; !dup {
			cfg.Plugins[criV1] = v
		}
	}
	return cfg, nil, nil
}

// logCapture keeps the warnings containerd's loader logs.
type logCapture struct{ entries []*logrus.Entry }

func (c *logCapture) Levels() []logrus.Level {
	return []logrus.Level{logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel, logrus.WarnLevel}
}

func (c *logCapture) Fire(e *logrus.Entry) error {
	c.entries = append(c.entries, e)
	return nil
}

// captureLogs returns a context whose containerd/log logger records
// warnings and errors in the returned capture instead of printing them.
func captureLogs(ctx context.Context) (context.Context, *logCapture) {
	c := &logCapture{}
	l := logrus.New()
	l.SetOutput(io.Discard)
	l.SetLevel(logrus.WarnLevel)
	l.AddHook(c)
	return log.WithLogger(ctx, logrus.NewEntry(l)), c
}
