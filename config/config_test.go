package config

import (
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The example file documents every key with its default: loading it into a
// zero Config must give exactly Default(), so neither can drift.
func TestExampleIsDefault(t *testing.T) {
	data, err := os.ReadFile("example.toml")
	if err != nil {
		t.Fatal(err)
	}
	var got Config
	if err := decode("example.toml", data, &got); err != nil {
		t.Fatal(err)
	}
	if want := Default(); !reflect.DeepEqual(&got, want) {
		t.Errorf("example.toml = %+v, Default() = %+v", got, *want)
	}
	if err := got.Validate(); err != nil {
		t.Errorf("example.toml does not validate: %v", err)
	}
}

// Every field of the schema is documented, since the doc comment is the
// only place an operator or a developer learns what a key does.
func TestFieldsDocumented(t *testing.T) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "config.go", nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	ast.Inspect(f, func(n ast.Node) bool {
		st, ok := n.(*ast.StructType)
		if !ok {
			return true
		}
		for _, field := range st.Fields.List {
			if field.Doc == nil || strings.TrimSpace(field.Doc.Text()) == "" {
				t.Errorf("%s: field %v has no doc comment", fset.Position(field.Pos()), field.Names)
			}
		}
		return true
	})
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadOverridesDefaults(t *testing.T) {
	p := writeFile(t, "# only the level\nlog_level = \"debug\"\n")
	cfg, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.LogLevel = "debug"
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("Load = %+v, want %+v", *cfg, *want)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.toml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want an error matching fs.ErrNotExist", err)
	}
}

func TestLoadErrors(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      []string // substrings; one starting with ":" follows the path
	}{
		{
			name: "unknown key",
			doc:  "root = \"/x\"\n\nroots = \"/y\"\n",
			want: []string{`:3: unknown key "roots"`},
		},
		{
			name: "unknown keys in tables",
			doc:  "log_level = \"info\"\n[debug]\naddress = \"x\"\n[remote.mirrors]\nx = 1\n",
			want: []string{`:2: unknown key "debug"`, `:4: unknown key "remote.mirrors"`},
		},
		{
			name: "wrong type",
			doc:  "root = \"/x\"\naddress = 42\n",
			want: []string{`:2: key "address": integer given, want a string`},
		},
		{
			name: "value as table",
			doc:  "[root]\nx = 1\n",
			want: []string{`:1: key "root": `},
		},
		{
			name: "duplicate key",
			doc:  "root = \"/x\"\nroot = \"/y\"\n",
			want: []string{`:2: key "root": `},
		},
		{
			name: "syntax error",
			doc:  "root = \"/x\"\nlog_level = 'info\n",
			want: []string{`:2:18: literal strings cannot have new lines`},
		},
		{
			name: "bad log level",
			doc:  "log_level = \"verbose\"\n",
			want: []string{`: log_level: "verbose" is not one of [trace debug info warn error]`},
		},
		{
			name: "bad profile",
			doc:  "[profile]\nwindow = \"0s\"\nidle = \"0s\"\nmax_size = \"1GiB\"\nmax_entries = 0\nmax_profiles = -1\n",
			want: []string{`profile.window: must be greater than 0`, `profile.idle: must be greater than 0`,
				`profile.max_size: 1GiB is not between 1KiB and 64MiB`, `profile.max_entries: 0 is not between 1 and 1048576`,
				`profile.max_profiles: -1 is less than 1`},
		},
		{
			name: "bad cache",
			doc:  "[cache]\ndir = \"cache\"\nmax_size = \"10\"\n",
			want: []string{`: cache.dir: "cache" is not an absolute path`, `cache.max_size: 10 is less than 1MiB (0 means no bound)`},
		},
		{
			name: "bad fetch settings",
			doc:  "[fs]\nreadahead_size = \"1GiB\"\nfetch_concurrency = 0\nbackground_fetch_concurrency = -1\n",
			want: []string{`: fs.readahead_size: 1GiB is more than 256MiB`, "fs.fetch_concurrency: 0 is less than 1", "fs.background_fetch_concurrency: -1 is less than 1"},
		},
		{
			name: "bad verification settings",
			doc:  "[fs]\nverify = \"always\"\nverify_concurrency = 0\n[containerd]\naddress = \"containerd.sock\"\nsnapshotter = \"\"\n",
			want: []string{`: fs.verify: "always" is not one of [auto background before-commit off]`, "fs.verify_concurrency: 0 is less than 1",
				`containerd.address: "containerd.sock" is not an absolute path`, "containerd.snapshotter: must not be empty"},
		},
		{
			name: "bad limits",
			doc:  "[fs]\nmax_toc_size = \"4KiB\"\nmax_chunk_size = \"2TiB\"\nmax_toc_entries = 10\nmax_name_length = 8192\nmax_path_depth = 0\n",
			want: []string{
				`: fs.max_toc_size: 4KiB is less than 64KiB`, "fs.max_chunk_size: 2TiB is more than 1TiB",
				"fs.max_toc_entries: 10 is not between 1024 and", "fs.max_name_length: 8192 is not between 255 and 4096",
				"fs.max_path_depth: 0 is not between 16 and 2048",
			},
		},
		{
			name: "negative prefetch wait",
			doc:  "[fs]\nprefetch_wait = \"-1s\"\n",
			want: []string{`:2: key "fs.prefetch_wait"`},
		},
		{
			name: "bad cri",
			doc:  "address = \"/run/l.sock\"\n[containerd]\naddress = \"\"\n[cri]\naddress = \"/run/l.sock\"\ncredential_ttl = \"0s\"\n",
			want: []string{`: cri.address: "/run/l.sock" is also the snapshots socket (address)`,
				"cri.address: the image service forwards to containerd: containerd.address must not be empty", "cri.credential_ttl: must be greater than 0"},
		},
		{
			name: "bad fallback and metrics",
			doc:  "[snapshotter]\nfallback = \"download\"\n[metrics]\naddress = \"localhost\"\nmax_hosts = 0\n",
			want: []string{`snapshotter.fallback: "download" is not one of [pull error]`,
				`metrics.address: "localhost" is neither an absolute path (unix socket) nor host:port`,
				"metrics.max_hosts: 0 is not between 1 and 1024"},
		},
		{
			name: "metrics on the snapshots socket",
			doc:  "address = \"/run/l.sock\"\n[metrics]\naddress = \"/run/l.sock\"\n",
			want: []string{`metrics.address: "/run/l.sock" is also the socket of another service`},
		},
		{
			name: "bad remote settings",
			doc:  "[remote]\nstall_timeout = \"0s\"\nretries = -1\n",
			want: []string{`: remote.stall_timeout: must be greater than 0`, "remote.retries: -1 is negative"},
		},
		{
			name: "relative root and address",
			doc:  "root = \"var/lib/lazypull\"\naddress = \"\"\n",
			want: []string{`: root: "var/lib/lazypull" is not an absolute path`, "address: must not be empty"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeFile(t, tc.doc)
			cfg, err := Load(p)
			if err == nil {
				t.Fatalf("Load = %+v, want an error", *cfg)
			}
			for _, w := range tc.want {
				if strings.HasPrefix(w, ":") {
					w = p + w // the line belongs right after the path
				}
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if !strings.HasPrefix(err.Error(), p+":") {
				t.Errorf("error %q does not start with the path", err)
			}
		})
	}
}

// unitsDoc is a schema with the helper types, as later sections will use
// them.
type unitsDoc struct {
	Timeout Duration `toml:"timeout"`
	Cache   struct {
		Max  Size `toml:"max"`
		Some int  `toml:"some"`
	} `toml:"cache"`
}

func TestDecodeUnits(t *testing.T) {
	var v unitsDoc
	doc := "timeout = \"1m30s\"\n[cache]\nmax = \"64MiB\"\n"
	if err := decode("u.toml", []byte(doc), &v); err != nil {
		t.Fatal(err)
	}
	if v.Timeout.Duration != 90*time.Second || v.Cache.Max != 64*MiB {
		t.Errorf("decoded %+v", v)
	}
	if err := decode("u.toml", []byte("[cache]\nmax = 4096\n"), &v); err != nil || v.Cache.Max != 4096 {
		t.Errorf("integer size: %v, %d", err, v.Cache.Max)
	}
}

// Values of the helper types that go-toml rejects without a position must
// still be reported with their key and line.
func TestDecodeUnitErrors(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{"timeout = 30\n", `u.toml:1: key "timeout": duration 30 has no unit`},
		{"timeout = \"soon\"\n", `u.toml:1: key "timeout": invalid duration "soon"`},
		{"timeout = \"-1s\"\n", `u.toml:1: key "timeout": invalid duration "-1s": must not be negative`},
		{"[cache]\nsome = 1\nmax = 1.5\n", `u.toml:3: key "cache.max": invalid size "1.5"`},
		{"\n[cache]\nmax = -1\n", `u.toml:3: key "cache.max": negative integer`},
		{"[cache]\nmax = \"12 parsecs\"\n", `u.toml:2: key "cache.max": invalid size "12 parsecs"`},
		{"[cache]\nmax = true\n", `u.toml:2: key "cache.max": invalid size "true"`},
		{"timeout = [1]\n", `u.toml:1: key "timeout": array given, want a duration string such as "30s"`},
	} {
		var v unitsDoc
		err := decode("u.toml", []byte(tc.doc), &v)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("decode(%q) = %v, want an error containing %q", tc.doc, err, tc.want)
		}
	}
}

func TestLoadCache(t *testing.T) {
	p := writeFile(t, "[cache]\ndir = \"/srv/cache\"\nmax_size = 0\n")
	cfg, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Cache.Dir != "/srv/cache" || cfg.Cache.MaxSize != 0 {
		t.Errorf("Cache = %+v", cfg.Cache)
	}
}

// A key lazypulld no longer reads does not stop the daemon after an
// upgrade: the file loads, the key is listed with its line for a warning,
// and the other keys of its table count. Elsewhere it is unknown.
func TestLoadRemovedKey(t *testing.T) {
	p := writeFile(t, "[remote]\nretries = 5\nparallelism = 8\n")
	cfg, err := Load(p)
	if err != nil {
		t.Fatalf("Load with a removed key: %v", err)
	}
	if cfg.Remote.Retries != 5 {
		t.Errorf("remote.retries = %d, want 5", cfg.Remote.Retries)
	}
	if len(cfg.Removed) != 1 || cfg.Removed[0].Key != "remote.parallelism" || cfg.Removed[0].Line != 3 || cfg.Removed[0].File != p {
		t.Fatalf("Removed = %+v, want remote.parallelism at %s:3", cfg.Removed, p)
	}
	if msg := cfg.Removed[0].String(); !strings.Contains(msg, `:3: key "remote.parallelism" was removed and is ignored`) {
		t.Errorf("message %q", msg)
	}
	if _, err := Load(writeFile(t, "parallelism = 8\n")); err == nil || !strings.Contains(err.Error(), `:1: unknown key "parallelism"`) {
		t.Errorf("parallelism outside [remote]: %v, want an unknown key", err)
	}
}
