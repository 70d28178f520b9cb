package fs

import (
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"golang.org/x/sys/unix"
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
		opts := []Option{WithMemoryCacheSize(0), WithBackgroundFetch(false)}
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

// BenchmarkSequentialRead reads a 10 MiB file sequentially in 128 KiB
// reads, from a local file and from a mount whose content is all cached,
// after one warm-up read of each. Each iteration also reads the local file
// in the page cache the same way, untimed, and x-local is the speed
// against it: local/warm measured in the same moments, which matters on a
// machine that is busy with other work.
//
// In the read/ group the file is opened once and each iteration reads it
// from the start (pread), which is the read path alone; in the open+read/
// group each iteration opens, reads and closes it, which adds the FUSE
// open (a round trip to the FileSystem, where a local open is a few
// microseconds) and, for passthrough, the check of the cache entry.
//
//	local/warm          the file on local disk, in the page cache
//	fuse/warm           a 40-chunk file, passthrough off; the kernel serves
//	                    it from the mount's page cache (FOPEN_KEEP_CACHE)
//	fuse/passthrough    a one-chunk file served by passthrough from its
//	                    cache entry, in the page cache
//	fuse/whole          the 40-chunk file, passthrough on: the warm-up read
//	                    fetches its chunks, then the benchmark waits until an
//	                    open is served by passthrough from the whole-file
//	                    entry assembled from them
//	fuse/daemon         the 40-chunk file, passthrough off, with the mount's
//	                    page cache dropped before each iteration: every read
//	                    is a FUSE request that the FileSystem answers from
//	                    memory
//	local/dropped       the local file with its page cache dropped: read
//	                    from the disk (for scale only)
func BenchmarkSequentialRead(b *testing.B) {
	data := randomBytes(3, 10<<20)
	local := filepath.Join(b.TempDir(), "local")
	if err := os.WriteFile(local, data, 0o644); err != nil {
		b.Fatal(err)
	}
	multi := fullLayer(b)
	single := buildLayer(b, []tarEntry{file("big", 0o755, data)}, estargz.WithChunkSize(16<<20), estargz.WithCompressionLevel(gzip.BestSpeed))
	mount := func(b *testing.B, l *testLayer, passthrough bool) (*FileSystem, string) {
		f, err := New(b.TempDir(), newOpener(l), WithCache(newDirCache(b)), WithBackgroundFetch(false), WithPassthrough(passthrough))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { f.Close() })
		mp := mountpoint(b)
		if err := f.Mount(context.Background(), mp, l.labels()); err != nil {
			b.Fatal(err)
		}
		return f, filepath.Join(mp, "big")
	}
	multiData := multi.entries[7].data
	if multi.entries[7].hdr.Name != "big" {
		b.Fatal("fullEntries changed: entry 7 is not big")
	}
	cases := []struct {
		name  string
		setup func(b *testing.B) string
		drop  bool
	}{
		{"local/warm", func(*testing.B) string { return local }, false},
		{"fuse/warm", func(b *testing.B) string { _, p := mount(b, multi, false); return p }, false},
		{"fuse/passthrough", func(b *testing.B) string { _, p := mount(b, single, true); return p }, false},
		{"fuse/whole", func(b *testing.B) string {
			f, p := mount(b, multi, true)
			fh := openFile(b, p)
			readSeq(b, fh, make([]byte, 128<<10), false) // fetches and caches the chunks
			fh.Close()
			if !waitPassthrough(b, f, p, multiData) {
				b.Fatal("the file is not served by passthrough")
			}
			return p
		}, false},
		{"fuse/daemon", func(b *testing.B) string { _, p := mount(b, multi, false); return p }, true},
		{"local/dropped", func(*testing.B) string { return local }, true},
	}
	for _, reopen := range []bool{false, true} {
		group := "read/"
		if reopen {
			group = "open+read/"
		}
		for _, bc := range cases {
			b.Run(group+bc.name, func(b *testing.B) {
				p := bc.setup(b)
				buf := make([]byte, 128<<10)
				fh, ref := openFile(b, p), openFile(b, local)
				readSeq(b, fh, buf, false) // warm-up: fetches and caches the chunks
				readSeq(b, ref, buf, false)
				fh.Close()
				time.Sleep(2 * reopenQuiet) // for passthrough, not right after a release
				fh = openFile(b, p)         // the first open with all cached
				defer func() { fh.Close(); ref.Close() }()
				var refTime time.Duration
				b.SetBytes(int64(len(data)))
				b.ResetTimer()
				for range b.N {
					b.StopTimer()
					began := time.Now()
					if reopen {
						ref.Close()
						ref = openFile(b, local)
					}
					readSeq(b, ref, buf, false)
					refTime += time.Since(began)
					b.StartTimer()
					if reopen {
						fh.Close()
						fh = openFile(b, p)
					}
					readSeq(b, fh, buf, bc.drop)
				}
				b.StopTimer()
				b.ReportMetric(float64(refTime)/float64(b.Elapsed()), "x-local")
			})
		}
	}
}

func openFile(b *testing.B, p string) *os.File {
	fh, err := os.Open(p)
	if err != nil {
		b.Fatal(err)
	}
	return fh
}

// readSeq reads the 10 MiB file fh from its start in reads of len(buf),
// first dropping its page cache if drop is set.
func readSeq(b *testing.B, fh *os.File, buf []byte, drop bool) {
	if drop {
		b.StopTimer()
		if err := unix.Fadvise(int(fh.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	var n int64
	for {
		m, err := fh.ReadAt(buf, n)
		n += int64(m)
		if err == io.EOF {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	if n != 10<<20 {
		b.Fatalf("read %d bytes", n)
	}
}

// BenchmarkColdStart replays the start of an interpreter over a link of
// 40 ms round trip and 200 Mbit/s: it reads a 6 MiB executable, then 40 of
// the 200 modules of its library, one after another, from a fresh mount.
// It reports the blob reads (fetches/op) and the time (ns/op) of the
// whole start, with each way of fetching:
//
//	on-demand     each miss fetches its own chunks, in one request (the
//	              FileSystem before read-ahead)
//	readahead     a miss also fetches the window after it; large reads
//	              are split into parallel requests
//	prefetch      readahead, and the layer lists the files read at start
//	              before its prefetch landmark, fetched at Mount
//	background    readahead with background fetch starting at Mount
//
// Run it with -benchtime=3x: each start takes seconds.
func BenchmarkColdStart(b *testing.B) {
	es := append([]tarEntry{dir("bin/", 0o755), file("bin/python3", 0o755, randomBytes(4, 6<<20))}, libEntries(200)...)
	var read []string
	read = append(read, "bin/python3")
	for i := 0; i < 200; i += 5 {
		read = append(read, fmt.Sprintf("lib/m%03d.py", i))
	}
	plain := buildLayer(b, es)
	prio := buildLayer(b, es, estargz.WithPrioritizedFiles(read))
	for _, bc := range []struct {
		name string
		l    *testLayer
		opts []Option
	}{
		{"on-demand", plain, []Option{WithReadahead(0), WithFetchConcurrency(1), WithBackgroundFetch(false)}},
		{"readahead", plain, []Option{WithBackgroundFetch(false)}},
		{"prefetch", prio, []Option{WithBackgroundFetch(false)}},
		{"background", plain, []Option{WithBackgroundFetchDelay(0)}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var fetches int
			for range b.N {
				b.StopTimer()
				o := newOpener(bc.l)
				o.link = &netLink{rtt: 40 * time.Millisecond, rate: 200e6 / 8}
				f, err := New(b.TempDir(), o, append(bc.opts, WithCache(newMapCache()))...)
				if err != nil {
					b.Fatal(err)
				}
				mp := mountpoint(b)
				b.StartTimer()
				// Mount is timed: prefetch starts there.
				if err := f.Mount(context.Background(), mp, bc.l.labels()); err != nil {
					b.Fatal(err)
				}
				for _, name := range read {
					if _, err := os.ReadFile(filepath.Join(mp, name)); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				fetches += reads(o)
				f.Close()
			}
			b.ReportMetric(float64(fetches)/float64(b.N), "fetches/op")
		})
	}
}
