package integration

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/integration/testbed"
)

// TestLazyCorruptChunk puts a registry front between lazypulld and the
// registry that flips one byte inside the compressed payload of one file
// (/data/chunk4m, whose 4 MiB of random data gzip stores uncompressed, so
// the flip still inflates cleanly and only the chunk digest can catch it).
// Reading that file in a container must fail with EIO, every time, and
// never yield data; other files of the same layer must still read right in
// a second container; lazypulld must keep running.
func TestLazyCorruptChunk(t *testing.T) {
	const victim = "/data/chunk4m"
	forEachFlavour(t, func(t *testing.T, f testbed.Flavour) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		lb := newLazyBed(t, f, lazyBedOptions{Front: true})
		orig, img := pushDefaultImage(t, ctx, lb.Registry)
		converted := convertImage(t, ctx, orig, lb.Registry.Ref("lazypull/testimage:esgz"))

		layer, off := payloadByte(t, ctx, converted, strings.TrimPrefix(victim, "/"), 1<<20)
		lb.Front.CorruptBlob(layer, off)
		ref := lb.Front.Ref("lazypull/testimage:esgz")
		pullLazily(t, ctx, lb, ref)
		requireLazy(t, ctx, lb, lb.Containerd.Client(t),
			inspectImage(t, namespaces.WithNamespace(ctx, lb.Containerd.Namespace), lb.Containerd.Client(t), ref))

		// The victim twice: a failed fetch must not be remembered as data.
		out, err := runHashfiles(ctx, lb, ref, "corrupt-read", victim, "/data/hello", victim)
		if err == nil {
			t.Errorf("reading %s with a corrupted chunk succeeded; output:\n%s", victim, out)
		} else if !strings.Contains(err.Error(), "input/output error") {
			t.Errorf("reading %s with a corrupted chunk: want EIO (input/output error), got %v", victim, err)
		}
		if strings.Contains(out, victim) {
			t.Errorf("the container printed a digest for %s, whose chunk was corrupted:\n%s", victim, out)
		}
		requireOutput(t, out, probeOutput(t, img.expected, "/data/hello"))
		n := lb.Front.Flipped()
		if n == 0 {
			t.Fatalf("the front never served the corrupted byte of layer %s at %d: the test proves nothing", layer, off)
		}
		t.Logf("the front served the corrupted byte of layer %s at %d %d times", layer, off, n)

		// The daemon serves everything else, the same layer included.
		others := []string{"/data/hello", "/data/big", "/many/d24/f2499", "/xattr/file"}
		out, err = runHashfiles(ctx, lb, ref, "corrupt-others", others...)
		if err != nil {
			t.Fatalf("reading other files after the corrupted read: %v", err)
		}
		requireOutput(t, out, probeOutput(t, img.expected, others...))
		if !lb.Lazypulld.Running() {
			t.Errorf("lazypulld exited after serving a corrupted chunk")
		}
	})
}

// payloadByte returns the digest of the eStargz layer of image ref holding
// file name and the blob offset of a byte in the middle of the gzip member
// that holds the file's uncompressed offset fileOff, read from the TOC.
func payloadByte(t *testing.T, ctx context.Context, ref, file string, fileOff int64) (digest.Digest, int64) {
	t.Helper()
	return payloads(t, ctx, ref)(file, fileOff)
}

// payloads reads the layers of image ref once and returns payloadByte's
// lookup on them.
func payloads(t *testing.T, ctx context.Context, ref string) func(file string, fileOff int64) (digest.Digest, int64) {
	t.Helper()
	layers, err := remoteImage(t, ctx, ref).Layers()
	if err != nil {
		t.Fatal(err)
	}
	type layerTOC struct {
		dgst digest.Digest
		toc  *estargz.Reader
	}
	var tocs []layerTOC
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		blob, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		toc, err := estargz.Open(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))))
		if err != nil {
			t.Fatalf("layer of %s is not eStargz: %v", ref, err)
		}
		h, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		tocs = append(tocs, layerTOC{digest.Digest(h.String()), toc})
	}
	return func(file string, fileOff int64) (digest.Digest, int64) {
		t.Helper()
		for i := len(tocs) - 1; i >= 0; i-- { // the top layer's file is the one a container sees
			ce, ok := tocs[i].toc.ChunkEntryForOffset(file, fileOff)
			if !ok {
				continue
			}
			if ce.NextOffset() <= ce.Offset+2 {
				t.Fatalf("%s: chunk at %d has no payload to corrupt", file, ce.Offset)
			}
			return tocs[i].dgst, ce.Offset + (ce.NextOffset()-ce.Offset)/2
		}
		t.Fatalf("no layer of %s holds %s at %d", ref, file, fileOff)
		return "", 0
	}
}
