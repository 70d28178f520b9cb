package snapshotter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/errdefs"
)

const (
	// verdictFile, in a remote snapshot's directory, holds the outcome of
	// checking its layer against the DiffID its chain ID implies. It, not
	// LabelVerification (which clients may change), is what Prepare
	// trusts.
	verdictFile = "verification.json"
	// labelPrefix starts every label this package sets. Prepare and Commit
	// drop such labels from what they are given: they come from image
	// annotations, which whoever publishes an image controls.
	labelPrefix = "containerd.io/snapshot/lazypull."
	// labelTOCDigest is the eStargz TOC digest annotation, which a remote
	// snapshot is bound to along with its layer digest.
	labelTOCDigest = "containerd.io/snapshot/stargz/toc.digest"
	// labelParentChainID names the chain ID of the layer below; containerd
	// 2.3+ sets it, and Prepare sets it for every remote layer from the
	// parent snapshot itself, so that the FileSystem can tell which DiffID
	// the layer must have.
	labelParentChainID = "containerd.io/snapshot/parent-chain-id"
)

// Values of LabelVerification.
const (
	// Verified: the layer's uncompressed digest gives the snapshot's chain
	// ID, and the files served are those of that tar.
	Verified = "verified"
	// FailedPrefix starts the value of a layer that failed; the reason
	// follows.
	FailedPrefix = "failed: "
)

// verdict is the content of verdictFile.
type verdict struct {
	// Layer is the layer digest the verdict is about.
	Layer string `json:"layer"`
	// Failure is why verification failed; empty if the layer is verified.
	Failure string `json:"failure,omitempty"`
}

// SetVerification records the outcome of verifying the remote layer
// mounted at mountpoint from layer (a digest): verified if failure is
// empty, failed for that reason otherwise. It may come before the snapshot
// is committed (a layer verified while Prepare mounts it); Commit then
// applies it. From then on Prepare shares a verified snapshot with any pull
// of its chain ID and falls back for a failed one, and the committed
// snapshot carries LabelVerification. A failure is final. It returns an
// error of class NotFound if no snapshot has that mountpoint.
func (s *snapshotter) SetVerification(ctx context.Context, mountpoint, layer, failure string) error {
	id, ok := s.idOfMountpoint(mountpoint)
	if !ok {
		return fmt.Errorf("verification of %s: not a snapshot's mountpoint: %w", mountpoint, errdefs.ErrNotFound)
	}
	return s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		ids, err := idMap(ctx)
		if err != nil {
			return err
		}
		name, ok := ids[id]
		if !ok {
			return fmt.Errorf("verification of %s: no snapshot: %w", mountpoint, errdefs.ErrNotFound)
		}
		dir := s.snapshotDir(id)
		mounted, err := readRemoteFile(dir)
		switch {
		case err == nil && mounted[snapshotters.TargetLayerDigestLabel] != layer:
			return nil // about another layer: stale
		case err != nil && !errors.Is(err, os.ErrNotExist):
			return err
		}
		old, err := readVerdict(dir)
		if err != nil {
			return err
		}
		if old != nil && old.Layer == layer && (old.Failure != "" || failure == "") {
			return nil // final, or unchanged
		}
		if err := writeVerdict(dir, verdict{Layer: layer, Failure: failure}); err != nil {
			return fmt.Errorf("verification of snapshot %s: %w", name, err)
		}
		_, info, _, err := storage.GetInfo(ctx, name)
		if err != nil || info.Kind != snapshots.KindCommitted {
			return err // Commit applies it
		}
		labels, err := verdictLabels(dir)
		if err != nil || labels == nil {
			return err
		}
		_, err = storage.UpdateInfo(ctx, snapshots.Info{Name: name, Labels: labels}, "labels."+LabelVerification)
		return err
	})
}

// idOfMountpoint returns the id of the snapshot whose layer directory is
// mountpoint.
func (s *snapshotter) idOfMountpoint(mountpoint string) (string, bool) {
	rel, err := filepath.Rel(filepath.Join(s.root, "snapshots"), filepath.Clean(mountpoint))
	if err != nil {
		return "", false
	}
	id, rest, ok := strings.Cut(rel, string(filepath.Separator))
	return id, ok && rest == "fs" && id != ".." && id != "."
}

// verdictLabels returns the LabelVerification label of the remote snapshot
// in dir, or nil if its layer has no verdict yet.
func verdictLabels(dir string) (map[string]string, error) {
	v, err := layerVerdict(dir)
	if err != nil || v == nil {
		return nil, err
	}
	value := Verified
	if v.Failure != "" {
		value = shortReason(FailedPrefix + v.Failure)
	}
	return map[string]string{LabelVerification: value}, nil
}

// layerVerdict returns the verdict on the layer the remote snapshot in dir
// was mounted from, or nil.
func layerVerdict(dir string) (*verdict, error) {
	v, err := readVerdict(dir)
	if err != nil || v == nil {
		return nil, err
	}
	mounted, err := readRemoteFile(dir)
	if err != nil {
		return nil, err
	}
	if mounted[snapshotters.TargetLayerDigestLabel] != v.Layer {
		return nil, nil // about another layer
	}
	return v, nil
}

// boundTo returns why the committed remote snapshot in dir may not answer
// a Prepare of its chain ID with the labels given ("" if it may): a
// verified layer serves any pull of its chain ID, for its files are those
// of the tar that chain ID names; a failed one none; one not verified yet
// only a pull of the layer digest and TOC digest it was mounted from. A
// snapshot without remoteFile was applied, not mounted: not ours to judge.
func boundTo(dir, target string, labels map[string]string) (string, error) {
	mounted, err := readRemoteFile(dir)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	v, err := layerVerdict(dir)
	if err != nil {
		return "", err
	}
	switch {
	case v != nil && v.Failure != "":
		return fmt.Sprintf("snapshot %s failed verification: %s", target, v.Failure), nil
	case v != nil:
		return "", nil
	}
	want, have := labels[snapshotters.TargetLayerDigestLabel], mounted[snapshotters.TargetLayerDigestLabel]
	if want == "" {
		return fmt.Sprintf("snapshot %s is a lazily mounted layer not verified yet, and the pull does not say which layer it wants (no %s label)",
			target, snapshotters.TargetLayerDigestLabel), nil
	}
	if want != have {
		return fmt.Sprintf("snapshot %s was mounted from layer %s, not %s, and is not verified yet", target, have, want), nil
	}
	if want, have := labels[labelTOCDigest], mounted[labelTOCDigest]; want != have {
		return fmt.Sprintf("snapshot %s was mounted with TOC digest %q, not %q, and is not verified yet", target, have, want), nil
	}
	return "", nil
}

// withoutOwnLabels drops the labels of this package from the labels an Opt
// sets: they come from image annotations, which whoever publishes an image
// controls, and a forged LabelVerification must not show a layer verified.
func withoutOwnLabels(info *snapshots.Info) error {
	for k := range info.Labels {
		if strings.HasPrefix(k, labelPrefix) {
			delete(info.Labels, k)
		}
	}
	return nil
}

// chainLabels sets, in the labels a remote layer is mounted with, the
// chain ID of the layer below it (that of snapshot parent), which with the
// layer's own chain ID tells which DiffID the layer must have; any such
// label that came with the Prepare is replaced, or dropped for a layer
// without a parent. It runs in a transaction. It returns why the layer
// cannot be verified ("" if it can).
func chainLabels(ctx context.Context, parent string, labels map[string]string) (string, error) {
	delete(labels, labelParentChainID)
	if parent == "" {
		return "", nil
	}
	_, info, _, err := storage.GetInfo(ctx, parent)
	if err != nil {
		return "", fmt.Errorf("parent %s: %w", parent, err)
	}
	chainID := info.Labels[snapshots.LabelSnapshotRef]
	if chainID == "" {
		return fmt.Sprintf("parent snapshot %s has no %s label: no chain ID to verify the layer's DiffID with", parent, snapshots.LabelSnapshotRef), nil
	}
	labels[labelParentChainID] = chainID
	return "", nil
}

func readVerdict(dir string) (*verdict, error) {
	b, err := os.ReadFile(filepath.Join(dir, verdictFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var v verdict
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, verdictFile), err)
	}
	return &v, nil
}

func writeVerdict(dir string, v verdict) error {
	return writeJSON(filepath.Join(dir, verdictFile), v)
}
