package snapshotter

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/errdefs"
)

// prepareFallback makes the unpacker's Prepare of layer chainID on parent,
// requires mounts for containerd to apply the layer into (a fallback), and
// returns the reason the active snapshot carries. The active snapshot is
// removed again.
func prepareFallback(ctx context.Context, t *testing.T, sn snapshots.Snapshotter, chainID, parent string, labels map[string]string) string {
	t.Helper()
	key := fmt.Sprintf(snapshots.UnpackKeyFormat, "fallback", chainID)
	m, err := sn.Prepare(ctx, key, parent, snapshots.WithLabels(labels))
	if err != nil {
		t.Fatalf("Prepare of %s: %v, want mounts to apply the layer into", chainID, err)
	}
	if len(m) == 0 {
		t.Fatalf("Prepare of %s: no mounts", chainID)
	}
	info, err := sn.Stat(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := sn.Remove(ctx, key); err != nil {
		t.Fatal(err)
	}
	return info.Labels[LabelFallback]
}

// verifier is what the daemon calls on the snapshotter with the outcome
// of a layer's verification.
type verifier interface {
	SetVerification(ctx context.Context, mountpoint, layer, failure string) error
}

// TestPrepareBinding: a lazily mounted layer answers a later pull of its
// chain ID only when it is bound to what that pull asks for. Before it is
// verified, that is the layer digest and TOC digest it was mounted from:
// an image whose config copies another image's DiffIDs must not get its
// files used for the other image. Once verified, any pull of the chain ID;
// once failed, none.
func TestPrepareBinding(t *testing.T) {
	e := newRemoteEnv(t)
	ctx := testContext(t)
	sn := e.open(t)
	unpackRemote(ctx, t, sn, "chain-a", "", "sha256:aa")
	e.fs.add("sha256:a2", e.fs.dirs["sha256:aa"])

	withTOC := func(l map[string]string, toc string) map[string]string {
		l[labelTOCDigest] = toc
		return l
	}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		reason string // "" for ErrAlreadyExists
	}{
		{"same layer", layerLabels("chain-a", "sha256:aa"), ""},
		{"other layer", layerLabels("chain-a", "sha256:a2"), "mounted from layer sha256:aa, not sha256:a2"},
		{"other TOC", withTOC(layerLabels("chain-a", "sha256:aa"), "sha256:70c"), `TOC digest "", not "sha256:70c"`},
		{"no layer label", map[string]string{snapshots.LabelSnapshotRef: "chain-a"}, "does not say which layer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.reason == "" {
				unpackRemote(ctx, t, sn, "chain-a", "", tc.labels[snapshotters.TargetLayerDigestLabel])
				return
			}
			if got := prepareFallback(ctx, t, sn, "chain-a", "", tc.labels); !strings.Contains(got, tc.reason) {
				t.Errorf("fallback reason %q, want it to contain %q", got, tc.reason)
			}
		})
	}

	v := sn.(verifier)
	// A verdict about another layer (a stale report) changes nothing.
	if err := v.SetVerification(ctx, e.fs.mountpoint("sha256:aa"), "sha256:a2", "made up"); err != nil {
		t.Fatal(err)
	}
	if err := v.SetVerification(ctx, e.fs.mountpoint("sha256:aa"), "sha256:aa", ""); err != nil {
		t.Fatal(err)
	}
	requireVerification(ctx, t, sn, "chain-a", Verified)
	// Verified: the files are those of the tar the chain ID names, whichever
	// blob (another compression of it) a pull asks for.
	key := fmt.Sprintf(snapshots.UnpackKeyFormat, "other", "chain-a")
	if _, err := sn.Prepare(ctx, key, "", snapshots.WithLabels(layerLabels("chain-a", "sha256:a2"))); !errdefs.IsAlreadyExists(err) {
		t.Errorf("Prepare of a verified chain ID from another blob: %v, want ErrAlreadyExists", err)
	}

	unpackRemote(ctx, t, sn, "chain-b", "chain-a", "sha256:bb")
	if err := v.SetVerification(ctx, e.fs.mountpoint("sha256:bb"), "sha256:bb", "DiffID sha256:99 does not give chain ID chain-b"); err != nil {
		t.Fatal(err)
	}
	requireVerification(ctx, t, sn, "chain-b", FailedPrefix+"DiffID sha256:99 does not give chain ID chain-b")
	// A failure is final.
	if err := v.SetVerification(ctx, e.fs.mountpoint("sha256:bb"), "sha256:bb", ""); err != nil {
		t.Fatal(err)
	}
	requireVerification(ctx, t, sn, "chain-b", FailedPrefix+"DiffID sha256:99 does not give chain ID chain-b")
	got := prepareFallback(ctx, t, sn, "chain-b", "chain-a", layerLabels("chain-b", "sha256:bb"))
	if !strings.Contains(got, "failed verification: DiffID sha256:99") {
		t.Errorf("fallback reason %q, want the verification failure", got)
	}
	for _, mp := range []string{filepath.Join(e.root, "snapshots", "999", "fs"), filepath.Join(e.root, "snapshots", "..", "fs"), "/elsewhere"} {
		if err := v.SetVerification(ctx, mp, "sha256:bb", ""); !errdefs.IsNotFound(err) {
			t.Errorf("SetVerification at %s: %v, want NotFound", mp, err)
		}
	}

	// The verdicts outlive a restart, and a client cannot relabel them
	// into force.
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	sn = e.open(t)
	if _, err := sn.Update(ctx, snapshots.Info{Name: "chain-b", Labels: map[string]string{LabelVerification: Verified}},
		"labels."+LabelVerification); err != nil {
		t.Fatal(err)
	}
	if got := prepareFallback(ctx, t, sn, "chain-b", "chain-a", layerLabels("chain-b", "sha256:bb")); !strings.Contains(got, "failed verification") {
		t.Errorf("after a restart and a relabel: fallback reason %q, want the verification failure", got)
	}
	key = fmt.Sprintf(snapshots.UnpackKeyFormat, "restarted", "chain-a")
	if _, err := sn.Prepare(ctx, key, "", snapshots.WithLabels(layerLabels("chain-a", "sha256:a2"))); !errdefs.IsAlreadyExists(err) {
		t.Errorf("after a restart: Prepare of a verified chain ID: %v, want ErrAlreadyExists", err)
	}
}

// TestVerifiedWhileMounting: a verdict that comes while Prepare mounts the
// layer (a layer verified before it is committed) is on the snapshot Prepare
// commits.
func TestVerifiedWhileMounting(t *testing.T) {
	e := newRemoteEnv(t)
	ctx := testContext(t)
	sn := e.open(t)
	e.fs.mounted = func(mountpoint, digest string) {
		if err := sn.(verifier).SetVerification(ctx, mountpoint, digest, ""); err != nil {
			t.Errorf("SetVerification while mounting: %v", err)
		}
	}
	unpackRemote(ctx, t, sn, "chain-a", "", "sha256:aa")
	requireVerification(ctx, t, sn, "chain-a", Verified)
}

func requireVerification(ctx context.Context, t *testing.T, sn snapshots.Snapshotter, name, want string) {
	t.Helper()
	info, err := sn.Stat(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if got := info.Labels[LabelVerification]; got != want {
		t.Errorf("%s: %s=%q, want %q", name, LabelVerification, got, want)
	}
}

// TestForgedLabels: labels of lazypull that come with a Prepare or Commit
// (from image annotations, which an image's publisher writes) do not make
// it onto snapshots, and a layer is mounted with the chain ID of the
// snapshot it is really stacked on, whatever the Prepare said.
func TestForgedLabels(t *testing.T) {
	e := newRemoteEnv(t)
	ctx := testContext(t)
	sn := e.open(t)
	forge := func(l map[string]string) map[string]string {
		l[LabelVerification] = Verified
		l[LabelRemote] = "true"
		l[labelParentChainID] = "sha256:forged"
		return l
	}
	key := fmt.Sprintf(snapshots.UnpackKeyFormat, "1", "chain-a")
	if _, err := sn.Prepare(ctx, key, "", snapshots.WithLabels(forge(layerLabels("chain-a", "sha256:aa")))); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare: %v", err)
	}
	key = fmt.Sprintf(snapshots.UnpackKeyFormat, "2", "chain-b")
	if _, err := sn.Prepare(ctx, key, "chain-a", snapshots.WithLabels(forge(layerLabels("chain-b", "sha256:bb")))); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare: %v", err)
	}
	if got := e.fs.mountLabels("sha256:aa")[labelParentChainID]; got != "" {
		t.Errorf("layer without a parent mounted with parent chain ID %q", got)
	}
	if got := e.fs.mountLabels("sha256:bb")[labelParentChainID]; got != "chain-a" {
		t.Errorf("layer on chain-a mounted with parent chain ID %q", got)
	}
	for _, name := range []string{"chain-a", "chain-b"} {
		requireVerification(ctx, t, sn, name, "")
	}

	// A layer containerd applies, committed with the annotations.
	labels := forge(layerLabels("chain-x", "sha256:xx"))
	key = fmt.Sprintf(snapshots.UnpackKeyFormat, "3", "chain-x")
	if _, err := sn.Prepare(ctx, key, "", snapshots.WithLabels(labels)); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "chain-x", key, snapshots.WithLabels(labels)); err != nil {
		t.Fatal(err)
	}
	info, err := sn.Stat(ctx, "chain-x")
	if err != nil {
		t.Fatal(err)
	}
	if info.Labels[LabelVerification] != "" || info.Labels[LabelRemote] != "" || info.Labels[LabelFallback] == "" {
		t.Errorf("applied layer's labels: %v", info.Labels)
	}
}
