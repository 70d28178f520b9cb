package main

import (
	"context"

	"github.com/lazypull/lazypull/dataplane"
)

var _ dataplane.StatusReporter = verifyingFS{}

// Status is how much of each layer the data plane serves is local, with
// where its verification stands, for /v1/status (lazypull status).
func (v verifyingFS) Status(ctx context.Context) ([]dataplane.LayerStatus, error) {
	vs, _, err := v.Verifications(ctx, 0) // at once: generations start past 0
	if err != nil {
		return nil, err
	}
	byMountpoint := make(map[string]dataplane.Verification, len(vs))
	for _, v := range vs {
		byMountpoint[v.Mountpoint] = v
	}
	stats := v.FileSystem.Stats()
	out := make([]dataplane.LayerStatus, len(stats))
	for i, s := range stats {
		out[i] = dataplane.LayerStatus{
			Mountpoint: s.Mountpoint, Layer: s.Layer.String(),
			Chunks: s.Chunks, LocalChunks: s.LocalChunks, TotalBytes: s.TotalBytes, LocalBytes: s.LocalBytes,
			FullyLocal: s.FullyLocal, Reads: s.Reads, Fetches: s.Fetches, FetchedBytes: s.FetchedBytes,
		}
		if ver, ok := byMountpoint[s.Mountpoint]; ok {
			out[i].ChainID = ver.ChainID
			out[i].Verification = &ver
		}
	}
	return out, nil
}
