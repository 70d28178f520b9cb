package fs

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkReadCold reads the 10 MiB file of a fresh mount: every chunk is
// fetched, decompressed and verified.
func BenchmarkReadCold(b *testing.B) {
	benchmarkRead(b, func() Cache { return nil })
}

// BenchmarkReadCached reads the 10 MiB file of a fresh mount whose chunks
// are all in the Cache: each is loaded and verified.
func BenchmarkReadCached(b *testing.B) {
	c := newMapCache()
	benchmarkRead(b, func() Cache { return c })
}

func benchmarkRead(b *testing.B, cache func() Cache) {
	l := fullLayer(b)
	mp := mountpoint(b)
	readFresh := func() {
		opts := []Option{WithMemoryCacheSize(0)}
		if c := cache(); c != nil {
			opts = append(opts, WithCache(c))
		}
		f, err := New(b.TempDir(), newOpener(l), opts...)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := f.Mount(context.Background(), mp, l.labels()); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		readAll(b, filepath.Join(mp, "big"))
		b.StopTimer()
	}
	b.StopTimer()
	readFresh() // fills the cache, if any
	b.SetBytes(10 << 20)
	b.ResetTimer()
	b.StopTimer()
	for range b.N {
		readFresh()
	}
}

func readAll(b *testing.B, p string) {
	fh, err := os.Open(p)
	if err != nil {
		b.Fatal(err)
	}
	defer fh.Close()
	if n, err := io.Copy(io.Discard, fh); err != nil || n != 10<<20 {
		b.Fatalf("read %d bytes: %v", n, err)
	}
}
