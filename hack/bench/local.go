package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/integration/testbed"
	"github.com/lazypull/lazypull/snapshotter"
)

// cacheTarget is what lazypulld's chunk cache (package cache: one file per
// entry under <dir>/sha256/<2 hex>/, named by the digest of the
// uncompressed chunk, shared by every layer) holds once an image is fully
// local: one entry per distinct chunk of its layers' regular files.
//
// lazypulld keeps per-layer fetch state (fs.FileSystem.Stats) but does not
// serve it yet, so the benchmark watches the cache directory instead.
type cacheTarget struct {
	Entries int   `json:"entries"`
	Bytes   int64 `json:"bytes"`
	// names are the file names of those entries. The cache holds other
	// entries too: copies of whole files, which FUSE passthrough reads.
	names map[string]bool
}

// localTarget reads the tables of contents of the eStargz image ref and
// returns its cacheTarget. The cache keys are those of package fs: a
// chunk's chunkDigest, or for a file in one chunk without one its digest.
func localTarget(ctx context.Context, ref, tmpDir string) (cacheTarget, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return cacheTarget{}, err
	}
	img, err := remote.Image(r, remote.WithContext(ctx))
	if err != nil {
		return cacheTarget{}, err
	}
	layers, err := img.Layers()
	if err != nil {
		return cacheTarget{}, err
	}
	keys := map[digest.Digest]int64{}
	for _, l := range layers {
		if err := func() error {
			f, err := tmpFile(tmpDir)
			if err != nil {
				return err
			}
			defer f.Close()
			rc, err := l.Compressed()
			if err != nil {
				return err
			}
			n, err := io.Copy(f, rc)
			rc.Close()
			if err != nil {
				return err
			}
			return addChunkKeys(keys, io.NewSectionReader(f, 0, n))
		}(); err != nil {
			dgst, _ := l.Digest()
			return cacheTarget{}, fmt.Errorf("layer %s: %w", dgst, err)
		}
	}
	t := cacheTarget{Entries: len(keys), names: map[string]bool{}}
	for key, size := range keys {
		t.Bytes += size
		t.names[key.Encoded()] = true
	}
	return t, nil
}

func addChunkKeys(keys map[digest.Digest]int64, sr *io.SectionReader) error {
	r, err := estargz.Open(sr)
	if err != nil {
		return err
	}
	root, ok := r.Lookup("")
	if !ok {
		return fmt.Errorf("no root directory in the TOC")
	}
	seen := map[*estargz.TOCEntry]bool{}
	var walk func(e *estargz.TOCEntry)
	walk = func(e *estargz.TOCEntry) {
		if seen[e] {
			return
		}
		seen[e] = true
		if e.Type == "reg" && e.Size > 0 {
			for off := int64(0); off < e.Size; {
				ce, ok := r.ChunkEntryForOffset(e.Name, off)
				if !ok || ce.ChunkSize <= 0 || ce.ChunkOffset > off {
					break
				}
				s := ce.ChunkDigest
				if s == "" && ce.ChunkSize == e.Size {
					s = e.Digest
				}
				if d, err := digest.Parse(s); err == nil {
					keys[d] = ce.ChunkSize
				}
				off = ce.ChunkOffset + ce.ChunkSize
			}
		}
		e.ForeachChild(func(_ string, child *estargz.TOCEntry) bool {
			walk(child)
			return true
		})
	}
	walk(root)
	return nil
}

// cacheEntries counts the entries named in names in the chunk cache at dir
// (no stat per entry: one directory read per fan-out directory).
func cacheEntries(dir string, names map[string]bool) (int, error) {
	fan, err := os.ReadDir(filepath.Join(dir, "sha256"))
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n := 0
	for _, d := range fan {
		ents, err := os.ReadDir(filepath.Join(dir, "sha256", d.Name()))
		if err != nil && !os.IsNotExist(err) {
			return 0, err
		}
		for _, e := range ents {
			if names[e.Name()] {
				n++
			}
		}
	}
	return n, nil
}

// waitLocal polls the cache at dir every interval until it holds every
// entry of want; it returns when it first did, or an error at ctx's end.
func waitLocal(ctx context.Context, dir string, want cacheTarget, interval time.Duration) (time.Time, error) {
	for {
		n, err := cacheEntries(dir, want.names)
		if err != nil {
			return time.Time{}, err
		}
		if n >= want.Entries {
			return time.Now(), nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("the chunk cache holds %d of the image's %d chunks: %w", n, want.Entries, ctx.Err())
		case <-time.After(interval):
		}
	}
}

// waitVerified waits until the snapshots of at least layers layers that
// lazypulld mounted in namespace ns carry its verification label, and
// returns when they first did. A layer that failed is an error.
func waitVerified(ctx context.Context, cl *client.Client, ns string, layers int, interval time.Duration) (time.Time, error) {
	ctx = namespaces.WithNamespace(ctx, ns)
	ss := cl.SnapshotService(testbed.SnapshotterName)
	for {
		n, failed := 0, ""
		err := ss.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
			if info.Labels[snapshotter.LabelRemote] != "true" {
				return nil
			}
			switch v := info.Labels[snapshotter.LabelVerification]; {
			case v == snapshotter.Verified:
				n++
			case strings.HasPrefix(v, snapshotter.FailedPrefix):
				failed = info.Name + ": " + v
			}
			return nil
		})
		switch {
		case err != nil:
			return time.Time{}, err
		case failed != "":
			return time.Time{}, fmt.Errorf("layer %s", failed)
		case n >= layers:
			return time.Now(), nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("%d of %d layers verified: %w", n, layers, ctx.Err())
		case <-time.After(interval):
		}
	}
}
