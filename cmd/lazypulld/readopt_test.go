package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lazypull/lazypull/snapshotter"
)

// readoptLayers is how many layers TestReadoptLayers mounts.
const readoptLayers = 60

// testLayer is an eStargz layer pushed to the test registry.
type testLayer struct {
	digest, toc string
}

// pushLayers builds n small eStargz layers, pushes them to a registry on
// 127.0.0.1 and returns them with the image reference to pull them by.
func pushLayers(t *testing.T, n int) (*httptest.Server, string, []testLayer) {
	t.Helper()
	srv := httptest.NewServer(ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	repo, err := name.NewRepository(host+"/readopt", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	layers := make([]testLayer, n)
	for i := range layers {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		data := []byte(fmt.Sprintf("layer %d\n", i))
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("l%03d", i), Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		blob, err := estargz.Build(io.NewSectionReader(bytes.NewReader(buf.Bytes()), 0, int64(buf.Len())))
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(blob)
		blob.Close()
		if err != nil {
			t.Fatal(err)
		}
		l := static.NewLayer(b, types.DockerLayer)
		if err := remote.WriteLayer(repo, l); err != nil {
			t.Fatal(err)
		}
		d, _ := l.Digest()
		layers[i] = testLayer{digest: d.String(), toc: blob.TOCDigest().String()}
	}
	return srv, repo.Name() + ":latest", layers
}

// TestReadoptLayers mounts many layers through the daemon and checks, with
// the registry stopped, that they stay served across a daemon kill (the
// data plane is adopted), are mounted again from their stored TOCs when
// their data plane dies, and again when everything was stopped (as after a
// reboot). It logs how long each took.
func TestReadoptLayers(t *testing.T) {
	e := newEnv(t)
	reg, ref, layers := pushLayers(t, readoptLayers)
	hosts := filepath.Join(e.dir, "hosts")
	host := strings.TrimPrefix(reg.URL, "http://")
	if err := os.MkdirAll(filepath.Join(hosts, host), 0o755); err != nil {
		t.Fatal(err)
	}
	doc := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", reg.URL, reg.URL)
	if err := os.WriteFile(filepath.Join(hosts, host, "hosts.toml"), []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf("[remote]\nhosts_dir = %q\nretries = 0\nrequest_timeout = \"5s\"\n[fs]\nbackground_fetch = false\nloader_prefetch = false\n", hosts)
	if err := os.WriteFile(e.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	d := start(t, e.args()...)
	d.waitServing(t, e.address)
	ctx := t.Context()
	sn := dialSnapshotter(t, e.address)
	parent := ""
	for i, l := range layers {
		chain := fmt.Sprintf("chain-%03d", i)
		_, err := sn.Prepare(ctx, "extract-"+chain, parent, snapshots.WithLabels(map[string]string{
			snapshots.LabelSnapshotRef:                 chain,
			"containerd.io/snapshot/cri.image-ref":     ref,
			"containerd.io/snapshot/cri.layer-digest":  l.digest,
			"containerd.io/snapshot/stargz/toc.digest": l.toc,
		}))
		if !errdefs.IsAlreadyExists(err) {
			t.Fatalf("Prepare of layer %d: %v, want it mounted lazily", i, err)
		}
		parent = chain
	}
	if _, err := sn.Prepare(ctx, "container", parent); err != nil {
		t.Fatal(err)
	}
	dp := planeInfos(t, e.root)[0].PID
	reg.Close() // from now on, no network

	// The daemon is killed and started again: the data plane is adopted.
	if err := d.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	d.wait(t)
	begin := time.Now()
	d = start(t, e.args()...)
	d.waitServing(t, e.address)
	serving := time.Since(begin)
	sn = dialSnapshotter(t, e.address)
	if _, err := sn.Mounts(ctx, "container"); err != nil {
		t.Fatalf("Mounts after a restart: %v", err)
	}
	t.Logf("restart: serving after %v, %d layers re-adopted after %v", serving, len(layers), time.Since(begin))
	if infos := planeInfos(t, e.root); len(infos) != 1 || infos[0].PID != dp {
		t.Fatalf("data planes %+v after a restart, want %d adopted", infos, dp)
	}

	// The data plane dies: the layers are mounted again, by a new one.
	begin = time.Now()
	if err := syscall.Kill(dp, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for i := range layers {
		chain := fmt.Sprintf("chain-%03d", i)
		for {
			info, err := sn.Stat(ctx, chain)
			if err != nil {
				t.Fatal(err)
			}
			if info.Labels[snapshotter.LabelRemounted] != "" {
				break
			}
			if time.Since(begin) > time.Minute {
				t.Fatalf("layer %d not mounted again a minute after its data plane died", i)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if _, err := sn.Mounts(ctx, "container"); err != nil {
		t.Fatalf("Mounts after the data plane died: %v", err)
	}
	t.Logf("data plane killed: %d layers mounted again, without the registry, after %v", len(layers), time.Since(begin))

	// Everything stops, as at a reboot: the next daemon mounts the
	// layers again from their stored TOCs.
	if code := d.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	stopPlanes(t, e.root)
	begin = time.Now()
	d = start(t, e.args()...)
	d.waitServing(t, e.address)
	sn = dialSnapshotter(t, e.address)
	if _, err := sn.Mounts(ctx, "container"); err != nil {
		t.Fatalf("Mounts after everything stopped: %v", err)
	}
	t.Logf("cold start: %d layers mounted again, without the registry, after %v", len(layers), time.Since(begin))
	if code := d.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}
