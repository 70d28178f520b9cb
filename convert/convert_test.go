package convert

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/google/go-containerregistry/pkg/compression"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	digest "github.com/opencontainers/go-digest"
)

var prioritized = []string{"usr/bin/app", "/etc/config", "missing/file", "opt/tool"}

// fixtureTars are three layers: the first holds both prioritized files, the
// second one of them, the third none (its opt/tool has no opt/ entry, so
// it cannot be moved).
func fixtureTars(t *testing.T) [][]byte {
	secure := reg("etc/secure", "s3cret")
	secure.mode, secure.uid, secure.gid = 0o600, 1000, 1001
	secure.xattrs = map[string]string{"user.note": "hello", "security.capability": "\x01\x00\x00\x02"}
	app := reg("usr/bin/app", randomData(1, 300<<10)) // spans several 64 KiB chunks
	app.mode = 0o755
	return [][]byte{
		makeTar(t,
			dir("etc/"), dir("usr/"), dir("usr/bin/"),
			reg("etc/config", "cfg v1"), secure, app,
			symlink("usr/bin/link", "app"),
			file{name: "usr/bin/app2", typ: tar.TypeLink, link: "usr/bin/app"},
			reg("usr/empty", ""),
			file{name: "etc/.wh.old", typ: tar.TypeReg, mode: 0o644},
		),
		makeTar(t,
			dir("etc/"), reg("etc/config", "cfg v2"),
			dir("usr/"), file{name: "usr/.wh..wh..opq", typ: tar.TypeReg},
			file{name: "var/", typ: tar.TypeDir, mode: 0o1777},
		),
		makeTar(t, dir("data/"), reg("data/big", strings.Repeat("z", 1<<20)), reg("opt/tool", "x")),
	}
}

func convertOpts(events *[]Progress, mu *sync.Mutex) []Opt {
	return []Opt{
		WithPrioritizedFiles(prioritized),
		WithChunkSize(64 << 10),
		WithCompressionLevel(6),
		WithJobs(2),
		WithProgress(func(p Progress) {
			mu.Lock()
			defer mu.Unlock()
			*events = append(*events, p)
		}),
	}
}

func TestConvertImage(t *testing.T) {
	host := newRegistry(t)
	tars := fixtureTars(t)
	layers := []v1.Layer{
		tarLayer(t, tars[0], compression.GZip, types.DockerLayer),
		tarLayer(t, tars[1], compression.GZip, types.DockerLayer),
		tarLayer(t, tars[2], compression.GZip, types.DockerLayer),
	}
	src := makeImage(t, false, v1.Platform{OS: "linux", Architecture: "amd64"}, layers...)
	push(t, host+"/src/app:v1", src)

	tmp := t.TempDir()
	var events []Progress
	var mu sync.Mutex
	opts := append(convertOpts(&events, &mu), WithTempDir(tmp))
	res, err := Convert(context.Background(), host+"/src/app:v1", host+"/dst/app:esgz", opts...)
	if err != nil {
		t.Fatal(err)
	}
	if res.MediaType != types.DockerManifestSchema2 || len(res.Images) != 1 || len(res.Images[0].Layers) != 3 {
		t.Fatalf("unexpected result %+v", res)
	}
	if res.Images[0].Platform != "linux/amd64" {
		t.Errorf("platform = %q", res.Images[0].Platform)
	}
	dst := checkImage(t, src, host+"/dst/app:esgz", tars)
	if d, _ := dst.Digest(); d != res.Digest {
		t.Errorf("result digest %s, pushed %s", res.Digest, d)
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("temp files left behind: %v", left)
	}
	// Every layer was reported done, after going through the phases in order.
	last := map[int]Phase{}
	for _, e := range events {
		if e.Phase < last[e.Layer] {
			t.Errorf("layer %d went from %s back to %s", e.Layer, last[e.Layer], e.Phase)
		}
		last[e.Layer] = e.Phase
	}
	for i := range 3 {
		if last[i] != PhaseDone {
			t.Errorf("layer %d ended in phase %s", i, last[i])
		}
	}

	// An eStargz image converts again (its TOC entry is not carried over).
	if _, err := Convert(context.Background(), host+"/dst/app:esgz", host+"/dst/app:twice", opts...); err != nil {
		t.Fatal(err)
	}
	checkImage(t, src, host+"/dst/app:twice", tars)
}

func TestConvertIndex(t *testing.T) {
	host := newRegistry(t)
	tars := fixtureTars(t)
	amd := makeImage(t, true, v1.Platform{OS: "linux", Architecture: "amd64"},
		tarLayer(t, tars[0], compression.GZip, types.OCILayer),
		tarLayer(t, tars[1], compression.ZStd, types.OCILayerZStd),
		tarLayer(t, tars[2], compression.None, types.OCIUncompressedLayer))
	arm := makeImage(t, true, v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"},
		tarLayer(t, tars[0], compression.GZip, types.OCILayer), // shared with amd64
		tarLayer(t, tars[2], compression.ZStd, types.OCILayerZStd))
	att := makeImage(t, true, v1.Platform{OS: "unknown", Architecture: "unknown"},
		tarLayer(t, makeTar(t, reg("intoto.json", "{}")), compression.GZip, types.OCILayer))
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	idx = mutate.AppendManifests(idx,
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{
			Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}, Annotations: map[string]string{"org.example.child": "amd"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{
			Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}},
		mutate.IndexAddendum{Add: att, Descriptor: v1.Descriptor{
			Platform:    &v1.Platform{OS: "unknown", Architecture: "unknown"},
			Annotations: map[string]string{"vnd.docker.reference.type": attestationType}}},
	)
	idx = mutate.Annotations(idx, map[string]string{"org.example.index": "kept"}).(v1.ImageIndex)
	ref, err := name.ParseReference(host + "/src/multi:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}

	var events []Progress
	var mu sync.Mutex
	res, err := Convert(context.Background(), host+"/src/multi:v1", host+"/dst/multi:esgz", convertOpts(&events, &mu)...)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Images) != 2 || len(res.Skipped) != 1 || res.Skipped[0].Reason == "" {
		t.Fatalf("converted %d, skipped %+v", len(res.Images), res.Skipped)
	}
	// The layer both platforms share was converted once.
	if a, b := res.Images[0].Layers[0], res.Images[1].Layers[0]; a.Digest != b.Digest {
		t.Errorf("shared layer converted twice: %s, %s", a.Digest, b.Digest)
	}

	dref, err := name.ParseReference(host + "/dst/multi:esgz")
	if err != nil {
		t.Fatal(err)
	}
	didx, err := remote.Index(dref)
	if err != nil {
		t.Fatal(err)
	}
	im, err := didx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if im.MediaType != types.OCIImageIndex || im.Annotations["org.example.index"] != "kept" {
		t.Errorf("index media type %s annotations %v", im.MediaType, im.Annotations)
	}
	if len(im.Manifests) != 2 {
		t.Fatalf("converted index has %d manifests, want 2 (attestation dropped)", len(im.Manifests))
	}
	want := []struct {
		p    v1.Platform
		ann  string
		src  v1.Image
		tars [][]byte
	}{
		{v1.Platform{OS: "linux", Architecture: "amd64"}, "amd", amd, tars},
		{v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, "", arm, [][]byte{tars[0], tars[2]}},
	}
	for i, w := range want {
		m := im.Manifests[i]
		if m.Platform == nil || !m.Platform.Equals(w.p) || m.Annotations["org.example.child"] != w.ann {
			t.Errorf("manifest %d: platform %v annotations %v, want %v %q", i, m.Platform, m.Annotations, w.p, w.ann)
		}
		if m.MediaType != types.OCIManifestSchema1 {
			t.Errorf("manifest %d: media type %s", i, m.MediaType)
		}
		checkImage(t, w.src, host+"/dst/multi@"+m.Digest.String(), w.tars)
	}

	// With a platform filter only the selected manifest is converted.
	res, err = Convert(context.Background(), host+"/src/multi:v1", host+"/dst/multi:arm",
		WithPlatforms(v1.Platform{OS: "linux", Architecture: "arm64"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Images) != 1 || res.Images[0].Platform != "linux/arm64/v8" {
		t.Fatalf("filtered conversion: %+v", res.Images)
	}
	_, err = Convert(context.Background(), host+"/src/multi:v1", host+"/dst/multi:none",
		WithPlatforms(v1.Platform{OS: "windows", Architecture: "amd64"}))
	if err == nil {
		t.Fatal("converting an index with no selected platform succeeded")
	}
}

func TestConvertInvalidLayer(t *testing.T) {
	host := newRegistry(t)
	good := tarLayer(t, makeTar(t, reg("ok", "fine")), compression.GZip, types.DockerLayer)
	for _, tc := range []struct {
		name string
		blob []byte
	}{
		{"not a tar", bytes.Repeat([]byte("garbage!"), 200)},
		{"broken gzip", append([]byte{0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff}, bytes.Repeat([]byte{0xde, 0xad}, 300)...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := static.NewLayer(tc.blob, types.DockerLayer)
			img, err := mutate.AppendLayers(empty.Image, good, bad)
			if err != nil {
				t.Fatal(err)
			}
			push(t, host+"/src/bad:v1", img)
			_, err = Convert(context.Background(), host+"/src/bad:v1", host+"/dst/bad:v1")
			if err == nil {
				t.Fatal("converting an invalid layer succeeded")
			}
			t.Logf("error: %v", err)
			badDigest, _ := bad.Digest()
			if !strings.Contains(err.Error(), badDigest.String()) || !strings.Contains(err.Error(), "layer 2/2") {
				t.Errorf("error does not name the bad layer %s: %v", badDigest, err)
			}
			if _, err := remote.Head(mustRef(t, host+"/dst/bad:v1")); err == nil {
				t.Error("a failed conversion tagged the destination")
			}
		})
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, o := range []Opt{WithChunkSize(-1), WithCompressionLevel(10), WithJobs(0), WithKeychain(nil)} {
		if _, err := Convert(context.Background(), "127.0.0.1:1/a:b", "127.0.0.1:1/c:d", o); err == nil {
			t.Error("an invalid option was accepted")
		}
	}
}

func push(t *testing.T, ref string, img v1.Image) {
	t.Helper()
	if err := remote.Write(mustRef(t, ref), img); err != nil {
		t.Fatal(err)
	}
}

func mustRef(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// checkImage reads the converted image at ref back and checks it against
// src, whose layers hold the tars srcTars.
func checkImage(t *testing.T, src v1.Image, ref string, srcTars [][]byte) v1.Image {
	t.Helper()
	dst, err := remote.Image(mustRef(t, ref))
	if err != nil {
		t.Fatal(err)
	}
	sman, _ := src.Manifest()
	dman, err := dst.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if dman.MediaType != sman.MediaType || dman.Config.MediaType != sman.Config.MediaType {
		t.Errorf("%s: media types %s/%s, want %s/%s", ref, dman.MediaType, dman.Config.MediaType, sman.MediaType, sman.Config.MediaType)
	}
	if !reflect.DeepEqual(dman.Annotations, sman.Annotations) {
		t.Errorf("%s: manifest annotations %v, want %v", ref, dman.Annotations, sman.Annotations)
	}
	checkConfig(t, src, dst)
	dcfg, _ := dst.ConfigFile()
	wantType := types.OCILayer
	if sman.MediaType == types.DockerManifestSchema2 {
		wantType = types.DockerLayer
	}
	if len(dman.Layers) != len(srcTars) {
		t.Fatalf("%s: %d layers, want %d", ref, len(dman.Layers), len(srcTars))
	}
	for i, d := range dman.Layers {
		if d.MediaType != wantType {
			t.Errorf("layer %d: media type %s, want %s", i, d.MediaType, wantType)
		}
		l, err := dst.LayerByDigest(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		blob, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		checkLayer(t, i, d, blob, dcfg.RootFS.DiffIDs[i], srcTars[i])
	}
	return dst
}

// checkConfig checks that the configs differ only in their DiffIDs.
func checkConfig(t *testing.T, src, dst v1.Image) {
	t.Helper()
	decode := func(img v1.Image) map[string]any {
		raw, err := img.RawConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		delete(m["rootfs"].(map[string]any), "diff_ids")
		return m
	}
	if s, d := decode(src), decode(dst); !reflect.DeepEqual(s, d) {
		t.Errorf("config changed beyond diff_ids:\n src %v\n dst %v", s, d)
	}
}

func checkLayer(t *testing.T, i int, d v1.Descriptor, blob []byte, diffID v1.Hash, srcTar []byte) {
	t.Helper()
	r, err := estargz.Open(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))))
	if err != nil {
		t.Fatalf("layer %d: estargz.Open: %v", i, err)
	}
	toc, err := digest.Parse(d.Annotations[estargz.TOCJSONDigestAnnotation])
	if err != nil {
		t.Fatalf("layer %d: toc annotation: %v", i, err)
	}
	if _, err := r.VerifyTOC(toc); err != nil {
		t.Errorf("layer %d: TOC does not verify against its annotation: %v", i, err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if got := d.Annotations[estargz.StoreUncompressedSizeAnnotation]; got != strconv.Itoa(len(raw)) {
		t.Errorf("layer %d: uncompressed-size annotation %s, want %d", i, got, len(raw))
	}
	if sum := sha256.Sum256(raw); "sha256:"+hex.EncodeToString(sum[:]) != diffID.String() {
		t.Errorf("layer %d: config DiffID %s does not match the layer", i, diffID)
	}

	want, _ := tarEntries(t, srcTar)
	got, order := tarEntries(t, raw)
	if !reflect.DeepEqual(got, want) {
		for n, e := range want {
			if !reflect.DeepEqual(got[n], e) {
				t.Errorf("layer %d: entry %s = %+v, want %+v", i, n, got[n], e)
			}
		}
		t.Errorf("layer %d: entries differ: got %d, want %d", i, len(got), len(want))
	}
	// The TOC serves every file's contents.
	for n, e := range want {
		if e.typ != tar.TypeReg {
			continue
		}
		sr, err := r.OpenFile(n)
		if err != nil {
			t.Errorf("layer %d: OpenFile(%s): %v", i, n, err)
			continue
		}
		b, _ := io.ReadAll(sr)
		if sha256.Sum256(b) != e.sum {
			t.Errorf("layer %d: %s read through the TOC differs", i, n)
		}
	}
	if _, ok := want["usr/bin/app"]; ok {
		if ce, ok := r.ChunkEntryForOffset("usr/bin/app", 70000); !ok || ce.ChunkOffset != 64<<10 {
			t.Errorf("layer %d: chunk at 70000 = %+v, want one starting at 64 KiB", i, ce)
		}
	}
	checkOrder(t, i, want, order)
}

// checkOrder checks that the prioritized files the layer holds come first,
// with their parent directories, followed by the prefetch landmark; and that
// a layer holding none starts with the no-prefetch landmark.
func checkOrder(t *testing.T, i int, entries map[string]entry, order []string) {
	t.Helper()
	var present []string
	for _, p := range prioritized {
		ok := true
		for q := cleanPath(p); ok && q != "."; q = path.Dir(q) {
			_, ok = entries[q]
		}
		if ok {
			present = append(present, cleanPath(p))
		}
	}
	if len(present) == 0 {
		if order[0] != estargz.NoPrefetchLandmark {
			t.Errorf("layer %d: starts with %q, want %s", i, order[0], estargz.NoPrefetchLandmark)
		}
		return
	}
	allowed := map[string]bool{}
	for _, p := range present {
		for q := p; q != "." && q != "/"; q = path.Dir(q) {
			allowed[q] = true
		}
	}
	for j, n := range order {
		if n == estargz.PrefetchLandmark {
			for _, p := range present {
				if !contains(order[:j], p) {
					t.Errorf("layer %d: prioritized %s is not before the landmark: %v", i, p, order)
				}
			}
			return
		}
		if !allowed[n] {
			t.Errorf("layer %d: %s comes before the landmark: %v", i, n, order)
		}
	}
	t.Errorf("layer %d: no %s: %v", i, estargz.PrefetchLandmark, order)
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
