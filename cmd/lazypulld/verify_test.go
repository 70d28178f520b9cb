package main

import (
	"context"
	"slices"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"

	"github.com/lazypull/lazypull/snapshotter"
)

// TestFailedSnapshots: at start, the daemon finds the snapshots that failed
// verification in an earlier run, and only those, to have containerd
// forget them.
func TestFailedSnapshots(t *testing.T) {
	ctx := context.Background()
	sn, err := snapshotter.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	for name, v := range map[string]string{
		"failed":    snapshotter.FailedPrefix + "DiffID differs",
		"verified":  snapshotter.Verified,
		"pending":   "",
		"lookalike": "not " + snapshotter.FailedPrefix,
	} {
		if _, err := sn.Prepare(ctx, name+"-key", ""); err != nil {
			t.Fatal(err)
		}
		labels := map[string]string{}
		if v != "" {
			labels[snapshotter.LabelVerification] = v
		}
		if err := sn.Commit(ctx, name, name+"-key"); err != nil {
			t.Fatal(err)
		}
		// As SetVerification labels a remote snapshot.
		if _, err := sn.Update(ctx, snapshots.Info{Name: name, Labels: labels}, "labels."+snapshotter.LabelVerification); err != nil {
			t.Fatal(err)
		}
	}
	got, err := failedSnapshots(ctx, sn)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{"failed"}) {
		t.Errorf("failedSnapshots = %v, want [failed]", got)
	}
}
