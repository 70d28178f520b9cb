package convert

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"fmt"
	"io"
	"log"
	"math/rand"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/compression"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// newRegistry serves an in-memory registry on 127.0.0.1 and returns its
// host:port.
func newRegistry(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(nopLogger())))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// file is an entry of a generated layer tar.
type file struct {
	name     string
	typ      byte
	mode     int64
	uid, gid int
	link     string
	xattrs   map[string]string
	data     []byte
}

func dir(name string) file { return file{name: name, typ: tar.TypeDir, mode: 0o755} }
func reg(name, data string) file {
	return file{name: name, typ: tar.TypeReg, mode: 0o644, data: []byte(data)}
}
func symlink(name, target string) file {
	return file{name: name, typ: tar.TypeSymlink, mode: 0o777, link: target}
}

// makeTar writes files into an uncompressed tar.
func makeTar(t *testing.T, files ...file) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(1700000000, 0)
	for _, f := range files {
		h := &tar.Header{
			Name: f.name, Typeflag: f.typ, Mode: f.mode, Uid: f.uid, Gid: f.gid,
			Linkname: f.link, ModTime: mtime, Size: int64(len(f.data)),
			Uname: fmt.Sprintf("u%d", f.uid), Gname: fmt.Sprintf("g%d", f.gid),
		}
		if f.typ != tar.TypeReg {
			h.Size = 0
		}
		if f.typ == tar.TypeChar {
			h.Devmajor, h.Devminor = 0, 0
		}
		if len(f.xattrs) > 0 {
			h.PAXRecords = map[string]string{}
			for k, v := range f.xattrs {
				h.PAXRecords["SCHILY.xattr."+k] = v
			}
			h.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			if _, err := tw.Write(f.data); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// tarLayer makes a layer from an uncompressed tar, compressed with comp and
// labelled mt.
func tarLayer(t *testing.T, tarball_ []byte, comp compression.Compression, mt types.MediaType) v1.Layer {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(tarball_)), nil
	}, tarball.WithCompression(comp), tarball.WithMediaType(mt))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// makeImage builds an image of layers with a history entry per layer and a
// config that has fields Convert must keep.
func makeImage(t *testing.T, oci bool, platform v1.Platform, layers ...v1.Layer) v1.Image {
	t.Helper()
	img := empty.Image
	if oci {
		img = mutate.MediaType(img, types.OCIManifestSchema1)
		img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	}
	var adds []mutate.Addendum
	for i, l := range layers {
		adds = append(adds, mutate.Addendum{Layer: l, History: v1.History{
			CreatedBy: fmt.Sprintf("RUN step %d > /out && echo <&>", i), Created: v1.Time{Time: time.Unix(1700000000+int64(i), 0).UTC()},
		}})
	}
	img, err := mutate.Append(img, adds...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = platform.OS, platform.Architecture, platform.Variant
	cf.Config.Env = []string{"PATH=/usr/bin", "A=b"}
	cf.Config.Entrypoint = []string{"/bin/app"}
	cf.Config.Labels = map[string]string{"org.example": "yes"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return mutate.Annotations(img, map[string]string{"org.example.manifest": "kept"}).(v1.Image)
}

// randomData is incompressible, so that chunking shows in the blob.
func randomData(seed int64, n int) string {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return string(b)
}

// entry is what a tar entry must keep through conversion.
type entry struct {
	typ      byte
	mode     int64
	uid, gid int
	link     string
	xattrs   map[string]string
	sum      [32]byte
	mtime    int64
}

// tarEntries reads a tar (gzip or not) into its entries by cleaned name, in
// order, leaving out the eStargz TOC and landmarks.
func tarEntries(t *testing.T, b []byte) (map[string]entry, []string) {
	t.Helper()
	var r io.Reader = bytes.NewReader(b)
	if len(b) > 2 && b[0] == 0x1f && b[1] == 0x8b {
		zr, err := gzip.NewReader(r)
		if err != nil {
			t.Fatal(err)
		}
		r = zr
	}
	tr := tar.NewReader(r)
	m := map[string]entry{}
	var order []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		name := cleanPath(h.Name)
		order = append(order, name)
		switch name {
		case "stargz.index.json", ".prefetch.landmark", ".no.prefetch.landmark":
			continue
		}
		e := entry{typ: h.Typeflag, mode: h.Mode, uid: h.Uid, gid: h.Gid, link: h.Linkname, sum: sha256.Sum256(data), mtime: h.ModTime.Unix()}
		for k, v := range h.PAXRecords {
			if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				if e.xattrs == nil {
					e.xattrs = map[string]string{}
				}
				e.xattrs[x] = v
			}
		}
		m[name] = e
	}
	return m, order
}

func nopLogger() *log.Logger { return log.New(io.Discard, "", 0) }
