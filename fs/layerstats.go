package fs

import (
	"sort"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// LayerStats is a snapshot of a mounted layer's fetch state.
type LayerStats struct {
	Mountpoint string
	Layer      digest.Digest
	// Chunks and LocalChunks count the chunks of the layer's file contents
	// and those of them known to be in the Cache.
	Chunks, LocalChunks int
	// TotalBytes and LocalBytes are the same in compressed bytes of the blob.
	TotalBytes, LocalBytes int64
	// FullyLocal is when every chunk was first local; zero until then.
	FullyLocal time.Time
	// Reads counts the FUSE read requests served (not those that the kernel
	// answered from its page cache or through passthrough).
	Reads int64
	// Fetches and FetchedBytes count the reads of the blob and their bytes.
	Fetches, FetchedBytes int64
}

// Stats returns the state of every mounted layer, by mountpoint.
func (f *FileSystem) Stats() []LayerStats {
	f.mu.Lock()
	var out []LayerStats
	for mp, m := range f.mounts {
		if m.server == nil {
			continue
		}
		out = append(out, LayerStats{Mountpoint: mp, Layer: m.layer.src.dgst})
	}
	layers := make(map[string]*layer, len(f.mounts))
	for mp, m := range f.mounts {
		layers[mp] = m.layer
	}
	f.mu.Unlock()
	for i := range out {
		l := layers[out[i].Mountpoint]
		s := &out[i]
		s.Chunks, s.LocalChunks, s.LocalBytes, s.FullyLocal = l.src.chunks.state()
		s.TotalBytes = l.src.chunks.payload
		s.Reads, s.Fetches, s.FetchedBytes = l.reads.Load(), l.fetches.Load(), l.fetched.Load()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Mountpoint < out[j].Mountpoint })
	return out
}
