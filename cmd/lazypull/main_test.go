package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/convert"
	"github.com/lazypull/lazypull/snapshotter"
)

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), append([]string{"lazypull"}, args...), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestConvertCommand(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct{ name, data string }{{"bin/", ""}, {"bin/sh", "#!"}, {"etc/", ""}, {"etc/hosts", "localhost"}} {
		typ := byte(tar.TypeReg)
		if strings.HasSuffix(f.name, "/") {
			typ = tar.TypeDir
		}
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o755, Size: int64(len(f.data)), Typeflag: typ}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(f.data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(host + "/src:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	list := filepath.Join(t.TempDir(), "prefetch.txt")
	if err := os.WriteFile(list, []byte("# start-up files\n/etc/hosts\n\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	code, stdout, stderr := runCLI(t, "convert", "--prioritize", list, "--chunk-size", "65536",
		"--compression-level", "5", "--platform", "linux/amd64", "--jobs", "2", host+"/src:v1", host+"/dst:v1")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.HasPrefix(stdout, host+"/dst:v1@sha256:") {
		t.Errorf("stdout %q does not name the pushed digest", stdout)
	}
	// Not a terminal: plain lines, one per phase, and a summary.
	for _, want := range []string{"linux/amd64 layer 1/1 sha256:", " fetching\n", " pushing ", " done ", "converted 1 layers of 1 image(s)"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	if strings.Contains(stderr, "\x1b[") {
		t.Errorf("escape sequences on a non-terminal:\n%s", stderr)
	}

	dst, err := remote.Image(mustRef(t, strings.TrimSpace(stdout)))
	if err != nil {
		t.Fatal(err)
	}
	m, err := dst.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	l, err := dst.LayerByDigest(m.Layers[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	blob, _ := io.ReadAll(rc)
	rc.Close()
	r, err := estargz.Open(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))))
	if err != nil {
		t.Fatal(err)
	}
	hosts, _ := r.Lookup("etc/hosts")
	mark, ok := r.Lookup(estargz.PrefetchLandmark)
	if !ok || hosts == nil || hosts.Offset > mark.Offset {
		t.Errorf("prioritized etc/hosts is not before %s", estargz.PrefetchLandmark)
	}

	// A platform the image does not have is an error.
	if code, _, stderr := runCLI(t, "convert", "--platform", "linux/s390x", host+"/src:v1", host+"/dst:v2"); code != 1 || !strings.Contains(stderr, "platform") {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"convert", "only-one"},
		{"convert", "--platform", "linux/amd64/v8/x/y", "a", "b"},
		{"convert", "--prioritize", "/nonexistent/list", "a", "b"},
		{"convert", "--no-such-flag", "a", "b"},
		{"pull"},
		{"pull", "Bad@@ref"},
		{"doctor", "extra"},
		{"doctor", "--timeout", "soon"},
	} {
		if code, _, stderr := runCLI(t, args...); code != exitUsage {
			t.Errorf("%v: exit %d, want %d (stderr %q)", args, code, exitUsage, stderr)
		}
	}
}

func TestParsePathList(t *testing.T) {
	got, err := parsePathList(strings.NewReader("# comment\n/bin/sh\n  usr/lib/x  \n\n./etc/y\n"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/bin/sh", "usr/lib/x", "./etc/y"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

type fakeSnapshots map[string]snapshots.Info

func (f fakeSnapshots) Stat(_ context.Context, key string) (snapshots.Info, error) {
	if info, ok := f[key]; ok {
		return info, nil
	}
	return snapshots.Info{}, fmt.Errorf("snapshot %s: %w", key, errdefs.ErrNotFound)
}

func TestLayerStatuses(t *testing.T) {
	esgz := map[string]string{estargz.TOCJSONDigestAnnotation: "sha256:00"}
	layers := []ocispec.Descriptor{
		{Digest: "sha256:a1", Annotations: esgz},
		{Digest: "sha256:a2", Annotations: esgz},
		{Digest: "sha256:a3"},
		{Digest: "sha256:a4", Annotations: esgz},
		{Digest: "sha256:a5", Annotations: esgz},
	}
	var diffIDs []digest.Digest
	for i := range layers {
		diffIDs = append(diffIDs, digest.FromString(fmt.Sprint(i)))
	}
	chain := identity.ChainIDs(append([]digest.Digest(nil), diffIDs...))
	sn := fakeSnapshots{
		chain[0].String(): {Labels: map[string]string{snapshotter.LabelRemote: "true"}},
		chain[1].String(): {Labels: map[string]string{snapshotter.LabelFallback: "registry returned 403"}},
		chain[2].String(): {},
		chain[3].String(): {},
		// chain[4] missing
	}
	st, err := layerStatuses(context.Background(), sn, layers, diffIDs)
	if err != nil {
		t.Fatal(err)
	}
	wants := []struct {
		lazy   bool
		reason string
	}{
		{true, ""},
		{false, "fallback: registry returned 403"},
		{false, "not eStargz"},
		{false, "a layer below was not lazy"},
		{false, "no snapshot"},
	}
	for i, w := range wants {
		if st[i].ChainID != chain[i] || st[i].Digest != layers[i].Digest {
			t.Errorf("layer %d: ids %s %s", i, st[i].Digest, st[i].ChainID)
		}
		if st[i].Lazy != w.lazy || !strings.HasPrefix(st[i].Reason, w.reason) {
			t.Errorf("layer %d: lazy %v reason %q, want %v %q", i, st[i].Lazy, st[i].Reason, w.lazy, w.reason)
		}
	}
	var out bytes.Buffer
	if n := printStatuses(&out, st); n != 1 || !strings.Contains(out.String(), "1 of 5 layers mounted lazily") {
		t.Errorf("printStatuses = %d:\n%s", n, out.String())
	}

	if _, err := layerStatuses(context.Background(), errSnapshots{}, layers[:1], diffIDs[:1]); err == nil {
		t.Error("a failing Stat was not reported")
	}
}

type errSnapshots struct{}

func (errSnapshots) Stat(context.Context, string) (snapshots.Info, error) {
	return snapshots.Info{}, errors.New("connection refused")
}

func TestProgressViewTerminal(t *testing.T) {
	var out bytes.Buffer
	v := newProgressView(&out, true)
	h := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
	for _, p := range []convert.Progress{
		{Platform: "linux/amd64", Layer: 0, Layers: 2, Source: h, Phase: convert.PhaseQueued},
		{Platform: "linux/amd64", Layer: 1, Layers: 2, Source: h, Phase: convert.PhaseQueued},
		{Platform: "linux/amd64", Layer: 0, Layers: 2, Source: h, Phase: convert.PhaseFetching, Bytes: 2048},
		{Platform: "linux/amd64", Layer: 0, Layers: 2, Source: h, Phase: convert.PhaseDone, Total: 4096},
		{Platform: "linux/amd64", Layer: 1, Layers: 2, Source: h, Phase: convert.PhaseFailed, Err: errors.New("boom")},
	} {
		v.update(p)
	}
	v.close()
	s := out.String()
	for _, want := range []string{"2 layer(s) queued", "layer 1/2 sha256:abababababab fetching 2.0 KiB", "layer 1/2 sha256:abababababab done 4.0 KiB\n", "layer 2/2 sha256:abababababab failed: boom\n", "\x1b[2A\x1b[J"} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%q", want, s)
		}
	}
	if n := strings.Count(s, "done 4.0 KiB"); n != 1 {
		t.Errorf("final line printed %d times", n)
	}
}

func mustRef(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// doctor reads lazypulld's configuration as lazypulld does, flags over the
// file, and exits 1 with its findings when one failed.
func TestDoctorCommand(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "lazypull.toml")
	if err := os.WriteFile(cfg, []byte("address = \"/run/lp-test/from-file.sock\"\n[fs]\ndisable = true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "flag.sock")
	code, stdout, stderr := runCLI(t, "doctor", "--json", "--config", cfg, "--address", sock,
		"--containerd-config", filepath.Join(dir, "none.toml"), "--containerd-address", "", "--containerd-version", "2.4.2")
	if code != exitDoctorFailed || stderr != "" {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	var report struct {
		OK       bool `json:"ok"`
		Findings []struct{ Check, Status, Found, Fix string }
	}
	if err := json.Unmarshal([]byte(stdout), &report); err != nil {
		t.Fatalf("%v:\n%s", err, stdout)
	}
	got := map[string]string{}
	for _, f := range report.Findings {
		got[f.Check] = f.Status + " " + f.Found
	}
	for check, want := range map[string]string{
		"lazypull.config":   "FAIL " + cfg + " sets [fs] disable = true",
		"lazypulld":         "FAIL no socket at " + sock,
		"containerd.config": "FAIL " + filepath.Join(dir, "none.toml") + " does not exist",
	} {
		if !strings.HasPrefix(got[check], want) {
			t.Errorf("%s: got %q, want %q...", check, got[check], want)
		}
	}
	if report.OK {
		t.Error("ok with failures")
	}
	// A file named with --config that does not exist is lazypulld's error too.
	_, stdout, _ = runCLI(t, "doctor", "--config", filepath.Join(dir, "missing.toml"), "--containerd-address", "")
	if !strings.Contains(stdout, "FAIL  lazypull.config") {
		t.Errorf("missing --config file not reported:\n%s", stdout)
	}
}
