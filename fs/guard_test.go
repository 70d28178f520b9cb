package fs

import (
	"context"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

// TestGoroutinesGuarded holds every goroutine the package starts (a go
// statement, a WaitGroup's Go) to recovering from a panic: its function is
// made by guard, or defers recovered first thing.
func TestGoroutinesGuarded(t *testing.T) {
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, ".", func(fi os.FileInfo) bool { return !strings.HasSuffix(fi.Name(), "_test.go") }, 0)
	if err != nil {
		t.Fatal(err)
	}
	guarded := func(fn ast.Expr) bool {
		switch fn := fn.(type) {
		case *ast.CallExpr: // x.guard(...)
			sel, ok := fn.Fun.(*ast.SelectorExpr)
			return ok && sel.Sel.Name == "guard"
		case *ast.FuncLit: // func() { ...; defer x.recovered(...); ... }
			for _, st := range fn.Body.List {
				if d, ok := st.(*ast.DeferStmt); ok {
					if sel, ok := d.Call.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "recovered" {
						return true
					}
				}
			}
		}
		return false
	}
	n := 0
	for _, pkg := range pkgs {
		for _, f := range pkg.Files {
			ast.Inspect(f, func(node ast.Node) bool {
				switch node := node.(type) {
				case *ast.GoStmt:
					n++
					if !guarded(node.Call.Fun) {
						t.Errorf("%s: goroutine that does not recover from a panic", fset.Position(node.Pos()))
					}
				case *ast.CallExpr:
					if sel, ok := node.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "Go" && len(node.Args) == 1 {
						n++
						if !guarded(node.Args[0]) {
							t.Errorf("%s: goroutine that does not recover from a panic", fset.Position(node.Pos()))
						}
					}
				}
				return true
			})
		}
	}
	if n < 10 {
		t.Errorf("found %d goroutines; the check is looking in the wrong place", n)
	}
}

// faultyOpener is a testOpener whose blobs (those of victim) panic when
// read, or whose Open, or Manifest, panics: a bug in the registry client,
// met while serving one layer.
type faultyOpener struct {
	*testOpener
	victim                 digest.Digest
	openPanics, blobPanics bool
	manifestPanics         bool
}

func (o *faultyOpener) Open(ctx context.Context, ref string, dgst digest.Digest, tail int64) (Blob, []byte, error) {
	if dgst == o.victim && o.openPanics {
		panic("open: injected")
	}
	b, t, err := o.testOpener.Open(ctx, ref, dgst, tail)
	if err == nil && dgst == o.victim && o.blobPanics {
		b = panickyBlob{b}
	}
	return b, t, err
}

func (o *faultyOpener) Manifest(ctx context.Context, ref string, dgst digest.Digest) ([]byte, error) {
	if o.manifestPanics {
		panic("manifest: injected")
	}
	return nil, errdefs.ErrNotFound
}

type panickyBlob struct{ Blob }

func (panickyBlob) ReadAt(context.Context, []byte, int64) (int, error) { panic("blob read: injected") }

// faultyCache is a FileCache whose Get, Put or PutFrom panic for the keys
// of victim's chunks.
type faultyCache struct {
	*dirCache
	victim            map[digest.Digest]bool
	get, put, putFrom bool
}

func (c *faultyCache) Get(key digest.Digest, p []byte) (int, bool) {
	if c.get && c.victim[key] {
		panic("cache get: injected")
	}
	return c.dirCache.Get(key, p)
}

func (c *faultyCache) Put(key digest.Digest, data []byte) error {
	if c.put && c.victim[key] {
		panic("cache put: injected")
	}
	return c.dirCache.Put(key, data)
}

func (c *faultyCache) PutFrom(key digest.Digest, size int64, r io.Reader) error {
	if c.putFrom && c.victim[key] {
		panic("cache put: injected")
	}
	return c.dirCache.PutFrom(key, size, r)
}

// chunkKeys returns the digests of the chunks (and of the files) of l.
func chunkKeys(t testing.TB, l *testLayer) map[digest.Digest]bool {
	t.Helper()
	r, err := estargz.Open(io.NewSectionReader(strings.NewReader(string(l.blob)), 0, int64(len(l.blob))))
	if err != nil {
		t.Fatal(err)
	}
	keys := map[digest.Digest]bool{}
	root, _ := r.Lookup("")
	walk(root, func(p string, e *estargz.TOCEntry) {
		for off := int64(0); off < e.Size; {
			ce, ok := r.ChunkEntryForOffset(p, off)
			if !ok {
				break
			}
			keys[digest.Digest(ce.ChunkDigest)] = true
			off = ce.ChunkOffset + ce.ChunkSize
		}
		keys[digest.Digest(e.Digest)] = true
	})
	return keys
}

// TestPanicFailsItsWorkAlone injects a panic into each kind of work the
// FileSystem does for a layer, on its own goroutines and on go-fuse's: the
// process lives on, the layer's readers get EIO where the work was theirs
// (never a hang), other layers on the same FileSystem read right, the
// panic is counted, and Close ends everything.
func TestPanicFailsItsWorkAlone(t *testing.T) {
	victim := hostileBase(t)
	keys := chunkKeys(t, victim)
	small := []byte("small")
	cases := []struct {
		name string
		set  func(o *faultyOpener, c *faultyCache)
		// mountErr, if set, is the class of Mount's error; otherwise
		// Mount succeeds and data/small reads as readErr says.
		mountErr func(error) bool
		readErr  error
		// whole reads data/big whole, twice: a whole-file assembly.
		whole bool
	}{
		// Mount fetches etc/passwd, the background fetch and the read the
		// rest: each meets the panic.
		{name: "blob read", set: func(o *faultyOpener, c *faultyCache) { o.blobPanics = true }, readErr: syscall.EIO},
		{name: "resolution", set: func(o *faultyOpener, c *faultyCache) { o.openPanics = true }, mountErr: errdefs.IsInternal},
		{name: "cache read", set: func(o *faultyOpener, c *faultyCache) { c.get = true }, readErr: syscall.EIO},
		// The chunk is verified before it is written: the read gets it.
		{name: "cache write", set: func(o *faultyOpener, c *faultyCache) { c.put = true }},
		{name: "whole-file assembly", set: func(o *faultyOpener, c *faultyCache) { c.putFrom = true }, whole: true},
		{name: "entrypoint prefetch", set: func(o *faultyOpener, c *faultyCache) { o.manifestPanics = true }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			inner := newOpener(victim)
			o := &faultyOpener{testOpener: inner, victim: victim.dgst}
			c := &faultyCache{dirCache: newDirCache(t), victim: keys}
			tc.set(o, c)
			f := newFS(t, o, WithCache(c), WithBackgroundFetchDelay(0))
			healthy := healthyLayers(t, f, inner)
			labels := victim.labels()
			labels[LabelManifestDigest] = digest.FromString("manifest").String()
			mp := mountpoint(t)
			err := f.Mount(context.Background(), mp, labels)
			if tc.mountErr != nil {
				if !tc.mountErr(err) {
					t.Fatalf("Mount: %v", err)
				}
			} else {
				if err != nil {
					t.Fatalf("Mount: %v", err)
				}
				got, err := os.ReadFile(filepath.Join(mp, "data/small"))
				if !errors.Is(err, tc.readErr) || (err == nil && string(got) != string(small)) {
					t.Errorf("read data/small: %q, %v; want error %v", got, err, tc.readErr)
				}
				if tc.whole {
					for range 2 {
						if _, err := os.ReadFile(filepath.Join(mp, "data/big")); err != nil {
							t.Fatal(err)
						}
					}
				}
			}
			waitPanics(t, f, tc.whole)
			healthy()
		})
	}
}

func recoveredPanics(f *FileSystem) int64 { return f.panics.Load() }

// waitPanics waits until f has recovered from a panic; optional says that
// the kernel may not have let the work that panics happen.
func waitPanics(t *testing.T, f *FileSystem, optional bool) {
	t.Helper()
	if eventually(20*time.Second, func() bool { return recoveredPanics(f) != 0 }) {
		return
	}
	if optional {
		t.Log("no panic met: the kernel has no FUSE passthrough")
		return
	}
	t.Fatal("no panic recovered within 20s: the test injected none")
}

// TestCloseLeavesNoGoroutines checks that Close stops read-ahead, prefetch
// and background fetch, even over a slow link.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	l := fullLayer(t)
	o := newOpener(l)
	o.link = &netLink{rtt: 50 * time.Millisecond, rate: 4 << 20}
	f, err := New(t.TempDir(), o, WithCache(newMapCache()), WithBackgroundFetchDelay(0))
	if err != nil {
		t.Fatal(err)
	}
	mp := mountpoint(t)
	if err := f.Mount(context.Background(), mp, l.labels()); err != nil {
		t.Fatal(err)
	}
	checkContent(t, filepath.Join(mp, "a/text"), []byte("hello, lazy world\n"))
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	eventually(5*time.Second, func() bool { return runtime.NumGoroutine() <= before })
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after Close, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}
