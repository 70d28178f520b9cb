package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/lazypull/lazypull/config"
	"github.com/lazypull/lazypull/fs"
)

func TestMissingExplicitConfig(t *testing.T) {
	e := newEnv(t)
	missing := filepath.Join(e.dir, "missing.toml")
	stderr := runFailing(t, "--config", missing, "--root", e.root, "--address", e.address)
	if !strings.Contains(stderr, missing) {
		t.Errorf("stderr %q does not name %s", stderr, missing)
	}
}

func TestMissingDefaultConfig(t *testing.T) {
	if _, err := os.Stat(config.DefaultPath); !errors.Is(err, os.ErrNotExist) {
		t.Skipf("%s exists on this machine (%v)", config.DefaultPath, err)
	}
	e := newEnv(t)
	d := start(t, "--root", e.root, "--address", e.address)
	d.waitServing(t, e.address)
	if code := d.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}

func TestConfigUnknownKey(t *testing.T) {
	e := newEnv(t)
	doc := fmt.Sprintf("root = %q\nlog_levle = \"debug\"\n", e.root)
	if err := os.WriteFile(e.config, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	stderr := runFailing(t, "--config", e.config, "--address", e.address)
	want := e.config + `:2: unknown key "log_levle"`
	if !strings.Contains(stderr, want) {
		t.Errorf("stderr %q does not contain %q", stderr, want)
	}
}

// A configuration file written for an earlier version, with a key that was
// removed since, still starts the daemon, which names the key in a warning.
func TestConfigRemovedKey(t *testing.T) {
	e := newEnv(t)
	doc := fmt.Sprintf("root = %q\n[remote]\nparallelism = 4\n", e.root)
	if err := os.WriteFile(e.config, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	d := start(t, "--config", e.config, "--address", e.address)
	d.waitServing(t, e.address)
	if code := d.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	log := d.stderr.String()
	if !strings.Contains(log, "level=warning") || !strings.Contains(log, "key=remote.parallelism") || !strings.Contains(log, "line=3") {
		t.Errorf("no warning naming remote.parallelism and its line in:\n%s", log)
	}
}

func TestBadFlagValue(t *testing.T) {
	e := newEnv(t)
	stderr := runFailing(t, e.args("--log-level", "loud")...)
	if !strings.Contains(stderr, "log_level") {
		t.Errorf("stderr %q does not name log_level", stderr)
	}
	stderr = runFailing(t, "--config", e.config, "--root", "relative/root", "--address", e.address)
	if !strings.Contains(stderr, "root") {
		t.Errorf("stderr %q does not name root", stderr)
	}
}

// A flag beats the file, and the file beats the default.
func TestFlagOverridesConfig(t *testing.T) {
	e := newEnv(t)
	fileAddress := filepath.Join(e.dir, "from-file.sock")
	doc := fmt.Sprintf("root = %q\naddress = %q\nlog_level = \"debug\"\n", e.root, fileAddress)
	if err := os.WriteFile(e.config, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	d := start(t, "--config", e.config, "--address", e.address)
	d.waitServing(t, e.address)
	if _, err := os.Lstat(fileAddress); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("daemon listens on the file's address too: %v", err)
	}
	// The root came from the file.
	if _, err := os.Stat(filepath.Join(e.root, lockFileName)); err != nil {
		t.Errorf("root from the file not used: %v", err)
	}
	if code := d.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}

// The defaults of the [fs] limits are the fs package's own, so that a
// daemon without a configuration file and a library user agree.
func TestLimitsDefaults(t *testing.T) {
	c := config.Default().FS
	got := fs.Limits{
		TOCCompressedSize: c.MaxTOCCompressedSize.Int64(), TOCSize: c.MaxTOCSize.Int64(),
		Entries: c.MaxTOCEntries, NameLength: c.MaxNameLength, PathDepth: c.MaxPathDepth,
		ChunkSize: c.MaxChunkSize.Int64(),
	}
	if want := fs.DefaultLimits(); got != want {
		t.Errorf("config defaults %+v, fs defaults %+v", got, want)
	}
}
