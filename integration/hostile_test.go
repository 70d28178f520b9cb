package integration

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/stargz-snapshotter/estargz"

	"github.com/lazypull/lazypull/integration/testbed"
	"github.com/lazypull/lazypull/integration/testimage"
	"github.com/lazypull/lazypull/snapshotter"
)

// hostileFS lowers lazypulld's limits on TOCs, through its configuration
// file, so that layers beyond them are quick to build and push.
const hostileFS = `max_toc_compressed_size = "1MiB"
max_toc_size = "48MiB"
max_toc_entries = 20000
`

// hostilePeakBound bounds how much lazypulld's resident memory may grow
// above what it was while it serves every hostile image of the test (the
// daemon runs with the race detector, which multiplies its memory: it grew
// by 200 to 250 MiB, most of it for the 40 MB of nested JSON, which is
// under the limit of this test's configuration and inflated). Before its
// TOC checks, the images crashed it.
const hostilePeakBound = 512 << 20

// hostileCase is an image whose top layer was written to hurt the node:
// want is what its snapshot's fallback label says, "" for a layer that is
// rightly mounted lazily.
type hostileCase struct {
	name, want string
	layer      func() (testimage.EStargzLayer, error)
}

// TestLazyHostileImages pulls and runs images whose top layer's TOC (with
// its correct digest in the manifest) is hostile: fields that crashed or
// hung lazypulld, a footer and TOC that made it fetch and hold far too
// much, xattrs that overlayfs would obey. lazypulld must keep its pid and
// stay under a memory bound; each hostile layer falls back to a normal
// pull with the reason on its snapshot, and its container reads the
// image's files; a container started before them and one started after
// read theirs right.
func TestLazyHostileImages(t *testing.T) {
	forEachFlavour(t, func(t *testing.T, f testbed.Flavour) {
		ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
		defer cancel()
		lb := newLazyBed(t, f, lazyBedOptions{FS: hostileFS})
		entry, err := os.ReadFile(entrypointBin)
		if err != nil {
			t.Fatal(err)
		}
		base, err := testimage.EStargz(hostileBaseLayer(entry), estargz.WithChunkSize(256<<10))
		if err != nil {
			t.Fatal(err)
		}
		good := pushEStargzImage(t, ctx, lb, "good", base)
		pullLazily(t, ctx, lb, good)
		before := startStdinReader(t, ctx, lb, good, "before")
		before.check(t, "/data/hello", "/data/big")

		pids := lb.Lazypulld.ServingPIDs()
		rss := map[int]int64{}
		for _, pid := range pids {
			if err := testbed.ResetPeakRSS(pid); err != nil {
				t.Fatal(err)
			}
			if rss[pid], err = testbed.RSS(pid); err != nil {
				t.Fatal(err)
			}
		}
		cl := lb.Containerd.Client(t)
		nctx := namespaces.WithNamespace(ctx, lb.Containerd.Namespace)
		for i, tc := range hostileCases() {
			top, err := tc.layer()
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			ref := pushEStargzImage(t, ctx, lb, fmt.Sprint("case", i), base, top)
			pullLazily(t, ctx, lb, ref)
			img := inspectImage(t, nctx, cl, ref)
			info, err := cl.SnapshotService(testbed.SnapshotterName).Stat(nctx, img.ChainIDs[1].String())
			if err != nil {
				t.Fatal(err)
			}
			reason := info.Labels[snapshotter.LabelFallback]
			switch {
			case tc.want == "" && (reason != "" || info.Labels[snapshotter.LabelRemote] != "true"):
				t.Errorf("%s: top layer not mounted lazily: labels %v", tc.name, info.Labels)
			case tc.want != "" && !strings.Contains(reason, tc.want):
				t.Errorf("%s: top layer's fallback label %q does not say %q", tc.name, reason, tc.want)
			}
			t.Logf("%s: fallback %q", tc.name, reason)
			out, err := runHashfiles(ctx, lb, ref, fmt.Sprint("hostile-", i), hostileProbes...)
			if err != nil {
				t.Errorf("%s: container: %v", tc.name, err)
			}
			requireOutput(t, out, hostileProbeOutput(entry))
		}

		for _, pid := range pids {
			if !lb.Lazypulld.Running() || !containsPID(lb.Lazypulld.ServingPIDs(), pid) {
				t.Fatalf("lazypulld process %d is gone: it crashed on a hostile image", pid)
			}
			peak, err := testbed.PeakRSS(pid)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("lazypulld %d: resident memory %d MiB before the hostile images, peak %d MiB while serving them (bound: +%d MiB)",
				pid, rss[pid]>>20, peak>>20, hostilePeakBound>>20)
			if peak-rss[pid] > hostilePeakBound {
				t.Errorf("lazypulld %d: peak resident memory %d MiB, more than %d MiB above the %d MiB before",
					pid, peak>>20, hostilePeakBound>>20, rss[pid]>>20)
			}
		}
		before.check(t, "/data/hello", "/data/big", "/etc/passwd")
		before.close(t)
		out, err := runHashfiles(ctx, lb, good, "after", "/data/hello", "/data/big")
		if err != nil {
			t.Fatal(err)
		}
		requireOutput(t, out, hashLines(map[string][]byte{"/data/hello": hostileHello, "/data/big": hostileBig}, "/data/hello", "/data/big"))
	})
}

var (
	hostileHello  = []byte("hello, hostile world\n")
	hostileBig    = testimage.Pseudo(11, 3<<20)
	hostilePasswd = []byte("root:x:0:0:root:/root:/bin/sh\n")
	hostileProbes = []string{"/data/hello", "/data/big", "/etc/passwd", "/pub/f", "/meta"}
)

// hostileBaseLayer is the bottom layer of every image of the test: the
// entrypoint and files that the containers read.
func hostileBaseLayer(entry []byte) testimage.Layer {
	return testimage.Layer{Entries: []testimage.Entry{
		testimage.File(testimage.EntrypointPath, 0o755, entry),
		testimage.Dir("data", 0o755),
		testimage.File("data/hello", 0o644, hostileHello),
		testimage.File("data/big", 0o644, hostileBig),
		testimage.Dir("etc", 0o755),
		testimage.File("etc/passwd", 0o644, hostilePasswd),
		testimage.Dir("secret", 0o700),
		testimage.File("secret/key", 0o600, []byte("SECRET")),
		testimage.Dir("pub", 0o755),
		testimage.File("pub/f", 0o644, []byte("public")),
		testimage.File("meta", 0o644, []byte("meta")),
	}}
}

// hostileTopLayer is what the hostile layers are made of, in chunks of
// 64 KiB: etc/passwd (which lazypulld fetches as soon as the layer is
// mounted), a file of several chunks, and meta, the same as below.
func hostileTopLayer() (testimage.EStargzLayer, error) {
	return testimage.EStargz(testimage.Layer{Entries: []testimage.Entry{
		testimage.Dir("etc", 0o755),
		testimage.File("etc/passwd", 0o644, hostilePasswd),
		testimage.Dir("top", 0o755),
		testimage.File("top/big", 0o644, testimage.Pseudo(12, 2<<20)),
		testimage.File("meta", 0o644, []byte("meta")),
	}}, estargz.WithChunkSize(64<<10))
}

func hostileCases() []hostileCase {
	edit := func(fn func(toc *estargz.JTOC)) func() (testimage.EStargzLayer, error) {
		return func() (testimage.EStargzLayer, error) {
			l, err := hostileTopLayer()
			if err != nil {
				return l, err
			}
			return l.EditTOC(fn)
		}
	}
	entry := func(toc *estargz.JTOC, name string) *estargz.TOCEntry {
		for _, e := range toc.Entries {
			if e.Name == name {
				return e
			}
		}
		panic("no entry " + name)
	}
	raw := func(size int64, js func() io.Reader) func() (testimage.EStargzLayer, error) {
		return func() (testimage.EStargzLayer, error) {
			l, err := hostileTopLayer()
			if err != nil {
				return l, err
			}
			return l.WithTOC(size, js())
		}
	}
	const deep = 20 << 20
	nested := `{"version":1,"entries":[],"x":`
	const inflated = 64 << 20
	empty := `{"version":1,"entries":[]}`
	var many strings.Builder
	many.WriteString(`{"version":1,"entries":[`)
	for i := range 25000 {
		fmt.Fprintf(&many, `{"name":"f%d","type":"fifo"},`, i)
	}
	manyJS := strings.TrimSuffix(many.String(), ",") + "]}"
	return []hostileCase{
		// A buffer sized from the chunk size: a crash at mount, where
		// lazypulld fetches etc/passwd.
		{"chunk size 2^62", `"etc/passwd"`, edit(func(toc *estargz.JTOC) {
			entry(toc, "etc/passwd").ChunkSize = 1 << 62
		})},
		// Indexing the TOC never ended, memory growing.
		{"negative chunk offset", `"etc/passwd"`, edit(func(toc *estargz.JTOC) {
			e := entry(toc, "etc/passwd")
			e.ChunkOffset, e.ChunkSize = -64, 32
		})},
		// A crash while the TOC was indexed.
		{"null entry", "null", edit(func(toc *estargz.JTOC) {
			toc.Entries = append(toc.Entries, nil)
		})},
		// 40 MB of JSON stored in 40 KB, which a recursive decoder
		// overflowed its stack on: a crash no recover catches.
		{"JSON nested 20M deep", "nested", raw(int64(len(nested)+2*deep+1), func() io.Reader {
			return io.MultiReader(strings.NewReader(nested), repeat('[', deep), repeat(']', deep), strings.NewReader("}"))
		})},
		// The whole blob fetched as its TOC.
		{"footer at the start of the blob", "compressed TOC", func() (testimage.EStargzLayer, error) {
			l, err := hostileTopLayer()
			if err != nil {
				return l, err
			}
			n := len(l.Blob) - estargz.FooterSize
			return testimage.EStargzLayer{Blob: append(l.Blob[:n:n], testimage.FooterAt(0)...), TOC: l.TOC}, nil
		}},
		// A TOC inflated and held whole, whatever its size.
		{"TOC inflating beyond the limit", "inflates", raw(inflated, func() io.Reader {
			return io.MultiReader(strings.NewReader(empty), repeat(' ', inflated-int64(len(empty))))
		})},
		{"too many entries", "entries", raw(int64(len(manyJS)), func() io.Reader { return strings.NewReader(manyJS) })},
		// Served verbatim, these made overlayfs show secret/ as pub/ and
		// the secret key as meta's content; mounted lazily, the layer
		// must change nothing of what the container sees.
		{"overlay xattrs", "", func() (testimage.EStargzLayer, error) {
			return testimage.EStargz(testimage.Layer{Entries: []testimage.Entry{
				{Name: "pub", Type: tar.TypeDir, Mode: 0o755, Xattrs: map[string]string{"trusted.overlay.redirect": "/secret"}},
				{Name: "meta", Type: tar.TypeReg, Mode: 0o644, Data: []byte("meta"), Xattrs: map[string]string{
					"trusted.overlay.metacopy": "", "trusted.overlay.redirect": "/secret/key",
				}},
			}})
		}},
	}
}

// hostileProbeOutput is what hashfiles prints for hostileProbes in any of
// the test's images: the hostile layers hold the same files as below.
func hostileProbeOutput(entry []byte) string {
	return hashLines(map[string][]byte{
		"/data/hello": hostileHello, "/data/big": hostileBig, "/etc/passwd": hostilePasswd,
		"/pub/f": []byte("public"), "/meta": []byte("meta"),
	}, hostileProbes...)
}

func hashLines(files map[string][]byte, paths ...string) string {
	var b strings.Builder
	for _, p := range paths {
		sum := sha256.Sum256(files[p])
		fmt.Fprintf(&b, "%s  %s\n", hex.EncodeToString(sum[:]), p)
	}
	return b.String()
}

func repeat(c byte, n int64) io.Reader {
	return io.LimitReader(byteReader(c), n)
}

type byteReader byte

func (b byteReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(b)
	}
	return len(p), nil
}

func containsPID(pids []int, pid int) bool {
	for _, p := range pids {
		if p == pid {
			return true
		}
	}
	return false
}

// pushEStargzImage pushes an image of layers to the test registry, as
// lazypull/hostile:name, and returns its reference.
func pushEStargzImage(t *testing.T, ctx context.Context, lb *lazyBed, name string, layers ...testimage.EStargzLayer) string {
	t.Helper()
	img, err := testimage.EStargzImage(layers, []string{"/" + testimage.EntrypointPath})
	if err != nil {
		t.Fatal(err)
	}
	ref := lb.Registry.Ref("lazypull/hostile:" + name)
	if _, err := testimage.Push(ctx, ref, img); err != nil {
		t.Fatal(err)
	}
	return ref
}

// stdinReader is a container that hashes the files named on its standard
// input.
type stdinReader struct {
	in   io.WriteCloser
	out  *bufio.Reader
	wait func() error
}

func startStdinReader(t *testing.T, ctx context.Context, lb *lazyBed, ref, id string) *stdinReader {
	t.Helper()
	cmd := lb.Containerd.RunCommand(ctx, testbed.SnapshotterName, ref, id, "/"+testimage.EntrypointPath, "-")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &stdinReader{in: in, out: bufio.NewReader(out), wait: cmd.Wait}
	t.Cleanup(func() { in.Close(); _ = cmd.Wait() })
	return r
}

// check has the container hash paths and compares with the base layer's.
func (r *stdinReader) check(t *testing.T, paths ...string) {
	t.Helper()
	files := map[string][]byte{"/data/hello": hostileHello, "/data/big": hostileBig, "/etc/passwd": hostilePasswd}
	var got strings.Builder
	for _, p := range paths {
		if _, err := io.WriteString(r.in, p+"\n"); err != nil {
			t.Fatalf("container reading %s: %v", p, err)
		}
		line, err := r.out.ReadString('\n')
		if err != nil {
			t.Fatalf("container reading %s: %v", p, err)
		}
		got.WriteString(line)
	}
	requireOutput(t, got.String(), hashLines(files, paths...))
}

func (r *stdinReader) close(t *testing.T) {
	t.Helper()
	r.in.Close()
	if err := r.wait(); err != nil {
		t.Errorf("container that read before and after the hostile images: %v", err)
	}
}

// TestLazyHostileMemory measures lazypulld's peak resident memory (VmHWM)
// while it pulls, at its default limits, the worst TOC they accept and
// hostile TOCs of the sizes first reported: 2 million entries, a TOC
// stored in a few hundred KB that inflates to 1 GiB. It is a measurement,
// not run unless LAZYPULL_MEASURE=1; without -race, the daemon is built
// as it ships:
//
//	LAZYPULL_MEASURE=1 go test -count=1 -run TestLazyHostileMemory -v ./integration/
func TestLazyHostileMemory(t *testing.T) {
	if os.Getenv("LAZYPULL_MEASURE") != "1" {
		t.Skip("a measurement: set LAZYPULL_MEASURE=1")
	}
	forEachFlavour(t, func(t *testing.T, f testbed.Flavour) {
		if f.ConfigVersion < 3 {
			t.Skip("measured on containerd 2.x")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		lb := newLazyBed(t, f, lazyBedOptions{NoBackgroundFetch: true})
		entry, err := os.ReadFile(entrypointBin)
		if err != nil {
			t.Fatal(err)
		}
		base, err := testimage.EStargz(hostileBaseLayer(entry))
		if err != nil {
			t.Fatal(err)
		}
		pullLazily(t, ctx, lb, pushEStargzImage(t, ctx, lb, "measure-base", base))
		cl := lb.Containerd.Client(t)
		nctx := namespaces.WithNamespace(ctx, lb.Containerd.Namespace)
		top, err := hostileTopLayer()
		if err != nil {
			t.Fatal(err)
		}
		_, tocOff, err := top.TOCJSON()
		if err != nil {
			t.Fatal(err)
		}
		// The worst TOC the defaults accept: 300,000 files, each with its
		// own chunk and names as long as fill 96 MiB.
		const n = 300_000 - 1
		dg := "sha256:" + strings.Repeat("0", 64)
		format := func(i int, name string) string {
			return fmt.Sprintf(`,{"name":%q,"type":"reg","size":1,"offset":%d,"digest":%q,"chunkDigest":%q}`, name, 1+int64(i)%(tocOff-1), dg, dg)
		}
		nameLen := (96<<20-64)/n - len(format(n, ""))
		fileEntry := func(i int) string {
			s := fmt.Sprint(i, "-")
			return format(i, s+strings.Repeat("n", nameLen-len(s)))
		}
		var worst strings.Builder
		worst.WriteString(`{"version":1,"entries":[{"name":"","type":"dir"}`)
		for i := range n {
			worst.WriteString(fileEntry(i))
		}
		worst.WriteString("]}")
		var million strings.Builder
		million.WriteString(`{"version":1,"entries":[`)
		for i := range 2_000_000 {
			fmt.Fprintf(&million, `{"name":"f%d","type":"fifo"},`, i)
		}
		millionJS := strings.TrimSuffix(million.String(), ",") + "]}"
		empty := `{"version":1,"entries":[]}`
		for _, c := range []struct {
			name string
			size int64
			js   func() io.Reader
		}{
			{"worst accepted TOC", int64(worst.Len()), func() io.Reader { return strings.NewReader(worst.String()) }},
			{"2 million entries", int64(len(millionJS)), func() io.Reader { return strings.NewReader(millionJS) }},
			{"1 GiB inflated", 1 << 30, func() io.Reader {
				return io.MultiReader(strings.NewReader(empty), repeat(' ', 1<<30-int64(len(empty))))
			}},
		} {
			l, err := top.WithTOC(c.size, c.js())
			if err != nil {
				t.Fatal(err)
			}
			ref := pushEStargzImage(t, ctx, lb, strings.ReplaceAll(c.name, " ", "-"), base, l)
			// The last serving process is the data plane, which parses TOCs.
			pids := lb.Lazypulld.ServingPIDs()
			pid := pids[len(pids)-1]
			if err := testbed.ResetPeakRSS(pid); err != nil {
				t.Fatal(err)
			}
			rss, _ := testbed.RSS(pid)
			began := time.Now()
			pullLazily(t, ctx, lb, ref)
			peak, _ := testbed.PeakRSS(pid)
			after, _ := testbed.RSS(pid)
			img := inspectImage(t, nctx, cl, ref)
			info, err := cl.SnapshotService(testbed.SnapshotterName).Stat(nctx, img.ChainIDs[1].String())
			if err != nil {
				t.Fatal(err)
			}
			how := "mounted lazily"
			if r := info.Labels[snapshotter.LabelFallback]; r != "" {
				how = "fell back: " + r
			}
			t.Logf("%s (%d MiB of JSON stored in %d KiB): %s; pulled in %v; lazypulld resident %d MiB before, peak %d MiB, %d MiB after",
				c.name, c.size>>20, (len(l.Blob)-int(tocOff))>>10, how, time.Since(began).Round(time.Millisecond), rss>>20, peak>>20, after>>20)
		}
		if !lb.Lazypulld.Running() {
			t.Error("lazypulld is gone")
		}
	})
}
