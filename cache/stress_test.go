package cache

import (
	"bytes"
	"math/rand"
	"sync"
	"testing"

	digest "github.com/opencontainers/go-digest"
)

// TestConcurrent has Put, Get, Open and Delete race over a small key space
// under a bound that forces constant eviction, also while the entries of a
// previous Dir are being indexed. Every hit must be the whole entry, and at
// the end the index must match the disk and the bound.
func TestConcurrent(t *testing.T) {
	const keys, size = 48, 1000
	root := t.TempDir()
	d := indexed(newDir(t, root, WithMaxSize(0)))
	data := make([][]byte, keys)
	key := make([]digest.Digest, keys)
	for i := range keys {
		data[i], key[i] = chunk(i, size+i)
		if i%2 == 0 {
			if err := d.Put(key[i], data[i]); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d = newDir(t, root, WithMaxSize(16*size))

	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(w)))
			p := make([]byte, 2*size)
			for range 400 {
				i := rng.Intn(keys)
				switch op := rng.Intn(10); {
				case op < 4:
					if err := d.Put(key[i], data[i]); err != nil {
						t.Error(err)
						return
					}
				case op < 8:
					if n, ok := d.Get(key[i], p); ok && !bytes.Equal(p[:n], data[i]) {
						t.Errorf("Get of entry %d: %d bytes, not the entry", i, n)
						return
					}
				case op < 9:
					if f, err := d.Open(key[i]); err == nil {
						n, _ := f.Read(p)
						f.Close()
						if !bytes.Equal(p[:n], data[i]) {
							t.Errorf("Open of entry %d: %d bytes, not the entry", i, n)
							return
						}
					}
				default:
					if err := d.Delete(key[i]); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	indexed(d)
	checkIndex(t, d)
	if st := d.Stats(); st.Evictions == 0 {
		t.Errorf("no eviction: %+v", st)
	}
}

// BenchmarkGet reads 64 KiB entries that are in the cache.
func BenchmarkGet(b *testing.B) {
	d := indexed(newDir(b, b.TempDir()))
	var keys []digest.Digest
	for i := range 64 {
		keys = append(keys, put(b, d, i, 64<<10))
	}
	b.SetBytes(64 << 10)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		p := make([]byte, 64<<10)
		i := 0
		for pb.Next() {
			if _, ok := d.Get(keys[i%len(keys)], p); !ok {
				b.Error("miss")
				return
			}
			i++
		}
	})
}

// BenchmarkPut writes 64 KiB entries into a cache that evicts as it goes.
func BenchmarkPut(b *testing.B) {
	d := indexed(newDir(b, b.TempDir(), WithMaxSize(16<<20)))
	b.SetBytes(64 << 10)
	b.ResetTimer()
	for i := range b.N {
		put(b, d, i, 64<<10)
	}
}

// BenchmarkIndex measures how long a restarted cache takes to index 100k
// small entries.
func BenchmarkIndex(b *testing.B) {
	root := b.TempDir()
	d, err := NewDir(root, WithMaxSize(0))
	if err != nil {
		b.Fatal(err)
	}
	for i := range 100_000 {
		put(b, d, i, 16)
	}
	if err := d.Close(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		d, err := NewDir(root, WithMaxSize(0))
		if err != nil {
			b.Fatal(err)
		}
		indexed(d)
		if st := d.Stats(); st.Entries != 100_000 {
			b.Fatalf("indexed %d entries", st.Entries)
		}
		d.Close()
	}
}
