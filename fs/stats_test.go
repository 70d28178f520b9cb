package fs

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// opOf returns the histogram of op name in m.
func opOf(t *testing.T, m Metrics, name string) OpLatency {
	t.Helper()
	for _, o := range m.Ops {
		if o.Op == name {
			if len(o.Buckets) != len(LatencyBuckets())+1 {
				t.Fatalf("%s: %d buckets, want %d", name, len(o.Buckets), len(LatencyBuckets())+1)
			}
			return o
		}
	}
	t.Fatalf("no histogram of %q in %+v", name, m.Ops)
	return OpLatency{}
}

// TestMetricsCount: what an operator reads of a FileSystem moves with what
// the containers do: the FUSE operations they cause are timed per
// operation, a read of a file not fetched yet is a chunk miss and the same
// read through a second mount of the layer (which the kernel's page cache
// of the first does not serve) a hit, and a layer's verdict is counted as
// verified or failed.
func TestMetricsCount(t *testing.T) {
	l := buildVerifyLayer(t, verifyEntries())
	diffID := diffIDOf(t, l.blob)
	f := newVerifyFS(t, newOpener(l), filepath.Join(t.TempDir(), "state"), WithBackgroundFetch(false))
	before := f.Metrics()
	if before.ChunkHits+before.ChunkMisses+before.Verified+before.VerifyFailed != 0 {
		t.Fatalf("counters of a new FileSystem: %+v", before)
	}

	mp := mountWith(t, f, chainLabels(l, diffID.String(), ""))
	if b, err := os.ReadFile(filepath.Join(mp, "etc/a")); err != nil || string(b) != "genuine a\n" {
		t.Fatalf("read: %q, %v", b, err)
	}
	m := f.Metrics()
	if m.ChunkMisses == 0 {
		t.Errorf("first read of etc/a: %d chunk misses, want at least one", m.ChunkMisses)
	}
	for _, name := range []string{"lookup", "open", "read"} {
		if o := opOf(t, m, name); o.Count == 0 || o.Sum <= 0 {
			t.Errorf("%s after a read: %d operations taking %v, want some", name, o.Count, o.Sum)
		}
	}
	if o := opOf(t, m, "readlink"); o.Count != 0 {
		t.Errorf("readlink: %d operations, want none", o.Count)
	}

	mp2 := mountWith(t, f, chainLabels(l, diffID.String(), ""))
	if b, err := os.ReadFile(filepath.Join(mp2, "etc/a")); err != nil || string(b) != "genuine a\n" {
		t.Fatalf("read through a second mount: %q, %v", b, err)
	}
	if m2 := f.Metrics(); m2.ChunkHits <= m.ChunkHits || m2.ChunkMisses != m.ChunkMisses {
		t.Errorf("read of a fetched chunk: hits %d -> %d, misses %d -> %d; want one more hit, no more misses",
			m.ChunkHits, m2.ChunkHits, m.ChunkMisses, m2.ChunkMisses)
	}

	waitVerdict(t, f, mp)
	waitVerdict(t, f, mp2)
	// The blob is verified: a mount under another DiffID is judged, and
	// refused, at once.
	other := diffIDOf(t, buildVerifyLayer(t, verifyEntries()[:1]).blob).String()
	if err := f.Mount(context.Background(), mountpoint(t), chainLabels(l, other, "")); err == nil {
		t.Fatal("mount of the layer under another DiffID succeeded")
	}
	if m3 := f.Metrics(); m3.Verified != 2 || m3.VerifyFailed != 1 {
		t.Errorf("verdicts: %d verified, %d failed; want 2 and 1", m3.Verified, m3.VerifyFailed)
	}
}
