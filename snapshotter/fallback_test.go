package snapshotter

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/continuity/fs/fstest"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// TestFallback covers layers that cannot be served lazily: containerd gets
// ordinary mounts to apply the layer into, and the reason ends up on the
// committed snapshot.
func TestFallback(t *testing.T) {
	e := newRemoteEnv(t)
	ctx := testContext(t)
	sn := e.open(t)

	for _, tc := range []struct {
		name, chainID string
		labels        map[string]string
		reason        string // substring of the fallback label
	}{
		{"mount fails", "chain-x", layerLabels("chain-x", "sha256:xx"), "layer sha256:xx is not eStargz"},
		{"no annotations", "chain-y", map[string]string{snapshots.LabelSnapshotRef: "chain-y"}, snapshotters.TargetLayerDigestLabel},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := fmt.Sprintf(snapshots.UnpackKeyFormat, "5678", tc.chainID)
			m, err := sn.Prepare(ctx, key, "", snapshots.WithLabels(tc.labels))
			if err != nil {
				t.Fatalf("Prepare: %v", err)
			}
			// containerd applies the layer.
			target := t.TempDir()
			if err := mount.All(m, target); err != nil {
				t.Fatal(err)
			}
			err = fstest.Apply(filesA).Apply(target)
			if uerr := mount.UnmountAll(target, 0); uerr != nil {
				t.Fatal(uerr)
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := sn.Commit(ctx, tc.chainID, key, snapshots.WithLabels(tc.labels)); err != nil {
				t.Fatal(err)
			}
			info, err := sn.Stat(ctx, tc.chainID)
			if err != nil {
				t.Fatal(err)
			}
			if got := info.Labels[LabelFallback]; !strings.Contains(got, tc.reason) {
				t.Errorf("fallback label %q, want it to contain %q", got, tc.reason)
			}
			if _, ok := info.Labels[LabelRemote]; ok {
				t.Errorf("fallback snapshot labelled remote: %v", info.Labels)
			}
			m, err = sn.View(ctx, "view-"+tc.chainID, tc.chainID)
			if err != nil {
				t.Fatal(err)
			}
			checkMounted(t, m, filesA)
		})
	}
}

// TestFallbackAboveRemote: a layer applied by containerd on top of a remote
// layer, and the snapshots above both, see both layers.
func TestFallbackAboveRemote(t *testing.T) {
	e := newRemoteEnv(t)
	ctx := testContext(t)
	sn := e.open(t)

	unpackRemote(ctx, t, sn, "chain-a", "", "sha256:aa")
	key := fmt.Sprintf(snapshots.UnpackKeyFormat, "5678", "chain-x")
	m, err := sn.Prepare(ctx, key, "chain-a", snapshots.WithLabels(layerLabels("chain-x", "sha256:xx")))
	if err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	if err := mount.All(m, target); err != nil {
		t.Fatal(err)
	}
	err = fstest.Apply(filesB).Apply(target)
	if uerr := mount.UnmountAll(target, 0); uerr != nil {
		t.Fatal(uerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "chain-x", key); err != nil {
		t.Fatal(err)
	}
	m, err = sn.Prepare(ctx, "container", "chain-x")
	if err != nil {
		t.Fatal(err)
	}
	checkMounted(t, m, filesA, filesB)
}

func TestShortReason(t *testing.T) {
	long := strings.Repeat("é", 3000)
	got := shortReason(long)
	if len(got) > maxFallbackReason || !strings.HasSuffix(got, "...") {
		t.Errorf("shortReason: %d bytes, suffix %q", len(got), got[len(got)-3:])
	}
	if !strings.HasPrefix(long, strings.TrimSuffix(got, "...")) {
		t.Error("shortReason cut a character")
	}
	if got := shortReason("short"); got != "short" {
		t.Errorf("shortReason(short) = %q", got)
	}
}

// TestCleanupUnmounts: Cleanup unmounts a remote layer left in a directory
// no snapshot refers to (a crash between mounting and committing) before
// deleting it, and never deletes through the mount.
func TestCleanupUnmounts(t *testing.T) {
	e := newRemoteEnv(t)
	ctx := testContext(t)
	sn := e.open(t)
	unpackRemote(ctx, t, sn, "chain-a", "", "sha256:aa")

	orphan := filepath.Join(e.root, "snapshots", "999")
	mp := filepath.Join(orphan, "fs")
	if err := os.MkdirAll(mp, 0o755); err != nil {
		t.Fatal(err)
	}
	labels := layerLabels("chain-b", "sha256:bb")
	if err := writeRemoteFile(orphan, labels); err != nil {
		t.Fatal(err)
	}
	if err := e.fs.Mount(ctx, mp, labels); err != nil {
		t.Fatal(err)
	}
	if err := sn.(snapshots.Cleaner).Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	requireMounted(t, mp, false)
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Errorf("orphan directory still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.layers, "bb", "b")); err != nil {
		t.Errorf("layer content behind the mount: %v", err)
	}
	// A plain bind mount left on an orphan is unmounted too.
	if err := os.MkdirAll(mp, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(filepath.Join(e.layers, "bb"), mp, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	if err := sn.(snapshots.Cleaner).Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	requireMounted(t, mp, false)
	if _, err := os.Stat(filepath.Join(e.layers, "bb", "b")); err != nil {
		t.Errorf("Cleanup deleted through a bind mount: %v", err)
	}
	findRemote(ctx, t, sn, "chain-a", "")
}

// countObserver records what an Observer is told.
type countObserver struct {
	mu       sync.Mutex
	mounted  int
	fellBack map[string]int
}

func (o *countObserver) Mounted() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.mounted++
}

func (o *countObserver) FellBack(class string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.fellBack == nil {
		o.fellBack = map[string]int{}
	}
	o.fellBack[class]++
}

// TestFallbackError: with WithFallbackError, a layer that cannot be
// mounted lazily fails its Prepare with an error that names the layer and
// the reason, and leaves no snapshot behind; a layer that can is mounted as
// ever. The Observer is told each outcome with the reason's class.
func TestFallbackError(t *testing.T) {
	e := newRemoteEnv(t)
	ctx := testContext(t)
	obs := &countObserver{}
	sn := e.open(t, WithFallbackError(), WithObserver(obs))

	for _, tc := range []struct {
		name, chainID string
		labels        map[string]string
		want          []string // substrings of the error
	}{
		{"mount fails", "chain-x", layerLabels("chain-x", "sha256:xx"), []string{"layer sha256:xx", "is not eStargz", `fallback is "error"`, "(other)"}},
		{"no annotations", "chain-y", map[string]string{snapshots.LabelSnapshotRef: "chain-y"}, []string{"chain-y", snapshotters.TargetLayerDigestLabel}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := fmt.Sprintf(snapshots.UnpackKeyFormat, "5678", tc.chainID)
			m, err := sn.Prepare(ctx, key, "", snapshots.WithLabels(tc.labels))
			if !errdefs.IsFailedPrecondition(err) {
				t.Fatalf("Prepare: got %v and mounts %v, want an error of class FailedPrecondition", err, m)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if _, err := sn.Stat(ctx, key); !errdefs.IsNotFound(err) {
				t.Errorf("Stat of %s after the failed Prepare: %v, want not found", key, err)
			}
		})
	}
	unpackRemote(ctx, t, sn, "chain-a", "", "sha256:aa")

	obs.mu.Lock()
	defer obs.mu.Unlock()
	if obs.mounted != 1 {
		t.Errorf("Observer told of %d lazy layers, want 1", obs.mounted)
	}
	// bindFS's error has no errdefs class.
	want := map[string]int{FallbackOther: 1, FallbackNotAnnotated: 1}
	if !maps.Equal(obs.fellBack, want) {
		t.Errorf("Observer told of fallbacks %v, want %v", obs.fellBack, want)
	}
}

// TestMountClass: the classes of the reasons of failed Mounts, as
// fs.FileSystem and the data planes return them.
func TestMountClass(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("layer has no TOC digest annotation: %w", errdefs.ErrFailedPrecondition), FallbackNotEStargz},
		{fmt.Errorf("no footer: %w", errdefs.ErrNotImplemented), FallbackNotEStargz},
		{fmt.Errorf("TOC digest mismatch: %w", errdefs.ErrDataLoss), FallbackInvalidLayer},
		{fmt.Errorf("401: %w", errdefs.ErrUnauthenticated), FallbackUnauthorized},
		{fmt.Errorf("blob unknown: %w", errdefs.ErrNotFound), FallbackNotFound},
		{fmt.Errorf("dial: %w", errdefs.ErrUnavailable), FallbackUnavailable},
		{errors.New("something else"), FallbackOther},
	} {
		if got := mountClass(tc.err); got != tc.want {
			t.Errorf("mountClass(%q) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
