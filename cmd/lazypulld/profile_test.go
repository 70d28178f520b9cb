package main

import (
	"archive/tar"
	"bytes"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/config"
	"github.com/lazypull/lazypull/fs"
	"github.com/lazypull/lazypull/profile"
)

// profChunk is the chunk size of the test layers: files of several chunks
// have chunks of their own in profiles.
const profChunk = 64 << 10

// profFile is a regular file of a test layer.
type profFile struct {
	name string
	data []byte
}

// profLayer is an eStargz layer pushed to the test registry.
type profLayer struct {
	dgst, toc digest.Digest
	files     []profFile
	v1        v1.Layer
}

// profImage is an image of profLayers pushed to the test registry.
type profImage struct {
	ref      string
	manifest digest.Digest
	layers   []profLayer
}

// profRegistry is a registry on 127.0.0.1 that counts the requests for
// each blob.
type profRegistry struct {
	srv  *httptest.Server
	repo name.Repository
	mu   sync.Mutex
	gets map[string]int // by blob digest
}

func newProfRegistry(t *testing.T) *profRegistry {
	t.Helper()
	r := &profRegistry{gets: map[string]int{}}
	h := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if i := strings.LastIndex(req.URL.Path, "/blobs/"); i >= 0 && req.Method == http.MethodGet {
			r.mu.Lock()
			r.gets[req.URL.Path[i+len("/blobs/"):]]++
			r.mu.Unlock()
		}
		h.ServeHTTP(w, req)
	}))
	t.Cleanup(r.srv.Close)
	var err error
	if r.repo, err = name.NewRepository(strings.TrimPrefix(r.srv.URL, "http://")+"/profile", name.Insecure); err != nil {
		t.Fatal(err)
	}
	return r
}

// blobGets is how many GETs blob d had.
func (r *profRegistry) blobGets(d digest.Digest) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gets[d.String()]
}

// layer builds an eStargz layer of files and pushes it.
func (r *profRegistry) layer(t *testing.T, files ...profFile) profLayer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	blob, err := estargz.Build(io.NewSectionReader(bytes.NewReader(buf.Bytes()), 0, int64(buf.Len())), estargz.WithChunkSize(profChunk))
	if err != nil {
		t.Fatal(err)
	}
	defer blob.Close()
	b, err := io.ReadAll(blob)
	if err != nil {
		t.Fatal(err)
	}
	l := static.NewLayer(b, types.DockerLayer)
	if err := remote.WriteLayer(r.repo, l); err != nil {
		t.Fatal(err)
	}
	d, _ := l.Digest()
	return profLayer{dgst: digest.Digest(d.String()), toc: blob.TOCDigest(), files: files, v1: l}
}

// image pushes an image of layers as tag.
func (r *profRegistry) image(t *testing.T, tag string, layers ...profLayer) profImage {
	t.Helper()
	img := empty.Image
	for _, l := range layers {
		var err error
		if img, err = mutate.AppendLayers(img, l.v1); err != nil {
			t.Fatal(err)
		}
	}
	ref := r.repo.Tag(tag)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	md, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return profImage{ref: ref.String(), manifest: digest.Digest(md.String()), layers: layers}
}

// digests are the digests of img's layers, bottom first.
func (img profImage) digests() []digest.Digest {
	ds := make([]digest.Digest, len(img.layers))
	for i, l := range img.layers {
		ds[i] = l.dgst
	}
	return ds
}

// testClock is a clock the test moves.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// profNode is a data plane's layer filesystem and profiler, as
// serveDataPlane wires them, with the prefetch policies that would blur
// what the profile fetches turned off.
type profNode struct {
	layers *fs.FileSystem
	prof   *profiler
	clock  *testClock
	dir    string
	mounts int
}

func newProfNode(t *testing.T, reg *profRegistry, edit func(*config.Config)) *profNode {
	t.Helper()
	dir := t.TempDir()
	hosts := filepath.Join(dir, "hosts", reg.repo.RegistryStr())
	if err := os.MkdirAll(hosts, 0o755); err != nil {
		t.Fatal(err)
	}
	doc := "server = \"" + reg.srv.URL + "\"\n\n[host.\"" + reg.srv.URL + "\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
	if err := os.WriteFile(filepath.Join(hosts, "hosts.toml"), []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Root = filepath.Join(dir, "root")
	cfg.Remote.HostsDir = filepath.Dir(hosts)
	cfg.FS.BackgroundFetch = false
	cfg.FS.LoaderPrefetch = false
	cfg.FS.ReadaheadSize = 0
	cfg.FS.DirPrefetchSize = 0
	cfg.FS.Passthrough = false
	cfg.Profile.Fetch = false
	if edit != nil {
		edit(cfg)
	}
	n := &profNode{clock: &testClock{now: time.Unix(1000, 0)}, dir: dir}
	resolver, err := newRegistryClient(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n.prof, err = newProfiler(cfg, resolver, n.clock.Now); err != nil {
		resolver.Close()
		t.Fatal(err)
	}
	layers, closeFS, err := newFileSystem(cfg, resolver, nil, n.prof.options()...)
	if err != nil {
		n.prof.Close()
		t.Fatal(err)
	}
	n.layers = layers
	t.Cleanup(func() {
		n.prof.Close()
		if err := closeFS(); err != nil {
			t.Error(err)
		}
	})
	return n
}

// mount mounts layer i of img as a pull of img does, and returns where.
func (n *profNode) mount(t *testing.T, img profImage, i int) string {
	t.Helper()
	n.mounts++
	mp := filepath.Join(n.dir, "mnt", strings.Repeat("m", n.mounts))
	if err := os.MkdirAll(mp, 0o755); err != nil {
		t.Fatal(err)
	}
	l := img.layers[i]
	var rest []string
	for _, o := range img.layers[i:] {
		rest = append(rest, o.dgst.String())
	}
	err := n.layers.Mount(t.Context(), mp, map[string]string{
		fs.LabelImageRef:       img.ref,
		fs.LabelLayerDigest:    l.dgst.String(),
		fs.LabelTOCDigest:      l.toc.String(),
		fs.LabelImageLayers:    strings.Join(rest, ","),
		fs.LabelManifestDigest: img.manifest.String(),
	})
	if err != nil {
		t.Fatalf("Mount of layer %d of %s: %v", i, img.ref, err)
	}
	return mp
}

// waitFor waits, up to a generous deadline, for cond.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// chunks returns the chunks of layer d that profile reads name.
func (n *profNode) chunks(t *testing.T, d digest.Digest, reads ...profile.Read) []fs.Chunk {
	t.Helper()
	l := n.prof.layers.get(d)
	if l == nil {
		t.Fatalf("layer %s not mounted", d)
	}
	var out []fs.Chunk
	for _, r := range reads {
		cs, err := l.Chunks(r.Path, r.Offset, r.Offset+1)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, cs...)
	}
	return out
}

// cached reports whether every chunk of cs, of layer d, is local.
func (n *profNode) cached(t *testing.T, d digest.Digest, cs []fs.Chunk) bool {
	l := n.prof.layers.get(d)
	for _, c := range cs {
		if l == nil || !l.Cached(t.Context(), c) {
			return false
		}
	}
	return true
}

// readFile reads name under mp and checks its content.
func readFile(t *testing.T, mp string, f profFile) {
	t.Helper()
	got, err := os.ReadFile(filepath.Join(mp, f.name))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, f.data) {
		t.Fatalf("%s: wrong content", f.name)
	}
}

// profFiles are the files of a test layer: "big" of three chunks, the
// others of one.
func profFiles(seed byte) []profFile {
	data := func(n int, b byte) []byte { return bytes.Repeat([]byte{b, seed}, n/2) }
	return []profFile{
		{"bin/app", data(1000, 'a')},
		{"big", data(3*profChunk, 'b')},
		{"etc/conf", data(200, 'c')},
		{"lib/unused", data(3000, 'u')},
	}
}
