package integration

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/integration/testbed"
	"github.com/lazypull/lazypull/integration/testimage"
)

// The bounds of the faults: a stalled answer is held far longer than the
// stall timeout lazypulld runs with here (3s) and than the bound its read
// must finish in; the bounds leave room for a busy machine and a daemon
// built with -race.
const (
	faultStall       = 60 * time.Second
	faultStallBound  = 15 * time.Second
	faultErrorBound  = 15 * time.Second
	faultRetryAfter  = 2 // seconds
	faultRetryBound  = 15 * time.Second
	faultStallConfig = "stall_timeout = \"3s\"\n"
)

// faultRig is a running container of the test image, lazily pulled
// through the front, whose reads the faults meet.
type faultRig struct {
	lb  *lazyBed
	rd  *pacedReader
	img *testImage
	// at returns the layer holding a file and a blob offset inside the
	// compressed bytes of its content at an uncompressed offset.
	at func(file string, off int64) (digest.Digest, int64)
}

// good reads path and fails t unless it reads right.
func (x *faultRig) good(t *testing.T, path string) time.Duration {
	t.Helper()
	line, took := x.rd.read(t, path)
	if want := hashLine(t, x.img.expected, path); line != want {
		t.Errorf("reading %s: got %q, want %q", path, line, want)
	}
	return took
}

// eio reads path and fails t unless the read fails with EIO.
func (x *faultRig) eio(t *testing.T, path string) time.Duration {
	t.Helper()
	line, took := x.rd.read(t, path)
	if !strings.HasPrefix(line, "error "+path+": ") || !strings.Contains(line, "input/output error") {
		t.Errorf("reading %s: got %q, want an I/O error", path, line)
	}
	return took
}

// TestRegistryFaultsWhileRunning runs a container that reads files of a
// lazily pulled image, one at a time as the test names them, while the
// registry front misbehaves in one way after another. Each fault states
// what the running container must see and how soon, and checks that the
// front did play it (else the test would prove nothing). Background fetch
// is off, so that only the container's reads meet the faults; each fault
// reads files no earlier read has brought.
func TestRegistryFaultsWhileRunning(t *testing.T) {
	forEachFlavour(t, func(t *testing.T, f testbed.Flavour) {
		ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
		defer cancel()
		lb := newLazyBed(t, f, lazyBedOptions{Front: true, NoBackgroundFetch: true, Remote: faultStallConfig})
		orig, img := pushDefaultImage(t, ctx, lb.Registry)
		converted := convertImage(t, ctx, orig, lb.Registry.Ref("lazypull/testimage:esgz"))
		ref := lb.Front.Ref("lazypull/testimage:esgz")
		pullLazily(t, ctx, lb, ref)
		requireLazy(t, ctx, lb, lb.Containerd.Client(t),
			inspectImage(t, namespaces.WithNamespace(ctx, lb.Containerd.Namespace), lb.Containerd.Client(t), ref))
		x := &faultRig{lb: lb, rd: startPacedReader(t, ctx, lb, ref, "faults"), img: img, at: payloads(t, ctx, converted)}
		x.good(t, "/data/hello") // the container runs
		for _, fc := range []struct {
			name string
			run  func(*testing.T, *faultRig)
		}{
			{"corrupt byte", faultCorruptByte},
			{"stall", faultStallMidBody},
			{"503 with Retry-After", faultUnavailable},
			{"registry down", faultRegistryDown},
			{"expired token", faultExpiredToken},
			{"expired storage URL", faultExpiredStorageURL},
		} {
			t.Run(fc.name, func(t *testing.T) { fc.run(t, x) })
		}
		if !lb.Lazypulld.Running() {
			t.Error("lazypulld exited")
		}
	})
}

// faultCorruptByte: 1 byte flipped on the wire is EIO, never wrong data;
// the file reads right once the wire is clean.
func faultCorruptByte(t *testing.T, x *faultRig) {
	const path = "/data/chunk4m"
	layer, off := x.at(strings.TrimPrefix(path, "/"), 1<<20)
	x.lb.Front.CorruptBlob(layer, off)
	x.eio(t, path)
	if x.lb.Front.Flipped() == 0 {
		t.Fatal("the front never served the corrupted byte: the test proves nothing")
	}
	x.lb.Front.Uncorrupt(layer)
	x.good(t, path)
}

// faultStallMidBody: an answer stalls mid-body for a minute; it is given up
// after the stall timeout and asked again, the read done within the bound.
func faultStallMidBody(t *testing.T, x *faultRig) {
	const path = "/data/big"
	layer, off := x.at(strings.TrimPrefix(path, "/"), 5<<20)
	x.lb.Front.StallBlob(layer, off, faultStall)
	took := x.good(t, path)
	if n := x.lb.Front.Stalls(); n != 1 {
		t.Fatalf("the front stalled %d answers, want 1: the test proves nothing", n)
	}
	t.Logf("read of %s with an answer stalled for %v: %v", path, faultStall, took)
	if took > faultStallBound {
		t.Errorf("read of %s took %v with a stalled answer, want under %v", path, took, faultStallBound)
	}
}

// faultUnavailable: the first answers for a file's bytes are 503s; they
// are retried (or failed over to the next host of hosts.toml, here the
// same front), the read right and within the bound.
func faultUnavailable(t *testing.T, x *faultRig) {
	const path = "/many/d08/f0850"
	layer, off := x.at(strings.TrimPrefix(path, "/"), 0)
	x.lb.Front.Unavailable(layer, off, 2, faultRetryAfter)
	took := x.good(t, path)
	if x.lb.Front.Answered503() == 0 {
		t.Fatal("the front answered no request with 503: the test proves nothing")
	}
	t.Logf("read of %s with %d answers 503 (Retry-After: %ds): %v", path, x.lb.Front.Answered503(), faultRetryAfter, took)
	if took > faultRetryBound {
		t.Errorf("read of %s took %v, want under %v", path, took, faultRetryBound)
	}
}

// faultRegistryDown: EIO soon, and the same file reads right once the
// registry is back, with nothing else done.
func faultRegistryDown(t *testing.T, x *faultRig) {
	const path = "/many/d13/f1350"
	x.lb.Front.Down(true)
	took := x.eio(t, path)
	x.lb.Front.Down(false)
	t.Logf("read of %s with the registry down: EIO after %v", path, took)
	if took > faultErrorBound {
		t.Errorf("read of %s with the registry down took %v to fail, want under %v", path, took, faultErrorBound)
	}
	x.good(t, path)
}

// faultExpiredToken: a token the registry stops accepting before the
// expiry it came with is replaced, and the read succeeds.
func faultExpiredToken(t *testing.T, x *faultRig) {
	x.lb.Front.RequireTokens(true)
	defer x.lb.Front.RequireTokens(false)
	x.good(t, "/many/d16/f1650")
	issued := x.lb.Front.TokensIssued()
	if issued == 0 {
		t.Fatal("no token issued: the test proves nothing")
	}
	x.lb.Front.ExpireTokens()
	x.good(t, "/many/d18/f1850")
	if n := x.lb.Front.TokensIssued(); n <= issued {
		t.Errorf("%d tokens issued after the expiry, want more than %d", n, issued)
	}
}

// faultExpiredStorageURL: blobs redirect to signed storage URLs; an
// expired one (403) is resolved again at the registry. A storage host that
// goes away fails reads with EIO, and the signature appears in no log
// line.
func faultExpiredStorageURL(t *testing.T, x *faultRig) {
	front := x.lb.Front
	front.RedirectBlobs(true)
	defer front.RedirectBlobs(false)
	x.good(t, "/many/d20/f2050")
	signed, _ := front.Redirects()
	if signed == 0 {
		t.Fatal("no blob GET was redirected: the test proves nothing")
	}
	front.ExpireSignatures()
	x.good(t, "/many/d21/f2150")
	if again, refused := front.Redirects(); refused == 0 || again <= signed {
		t.Errorf("after the signatures expired: %d refused by storage, %d redirects (%d before): want the expired URL refused and a new one", refused, again, signed)
	}
	front.StorageDown(true)
	x.eio(t, "/many/d22/f2250")
	front.StorageDown(false)
	x.good(t, "/many/d22/f2250")
	logs, err := os.ReadFile(x.lb.Lazypulld.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(logs), testbed.SignatureMarker) {
		t.Errorf("lazypulld's log (%s) carries a storage URL's signature", x.lb.Lazypulld.LogPath)
	}
	if !strings.Contains(string(logs), "/_storage/") {
		t.Errorf("lazypulld's log names no storage URL: the redaction check proves nothing")
	}
}

// TestRangeIgnoringRegistry pulls the test image through a front that
// strips Range headers, so that the registry answers every read with the
// whole blob, and runs a container that reads every file of the image,
// with background fetch on. Each blob must cross the wire once: what the
// front served for the pull and the run together must stay within 1.2
// times the image's layers (before spooling, a 66 MB image cost 592 MB).
// The reads all happen before the count is taken, so it does not race
// them; later requests could only add to it.
func TestRangeIgnoringRegistry(t *testing.T) {
	forEachFlavour(t, func(t *testing.T, f testbed.Flavour) {
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		defer cancel()
		lb := newLazyBed(t, f, lazyBedOptions{Front: true})
		orig, img := pushDefaultImage(t, ctx, lb.Registry)
		convertImage(t, ctx, orig, lb.Registry.Ref("lazypull/testimage:esgz"))
		ref := lb.Front.Ref("lazypull/testimage:esgz")
		lb.Front.IgnoreRange(true)

		before := lb.Front.BytesServed()
		pullLazily(t, ctx, lb, ref)
		pulled := inspectImage(t, namespaces.WithNamespace(ctx, lb.Containerd.Namespace), lb.Containerd.Client(t), ref)
		requireLazy(t, ctx, lb, lb.Containerd.Client(t), pulled)
		var files []string
		for _, p := range img.expected.Paths() {
			if n := img.expected[p]; n.Type == testimage.TypeReg {
				files = append(files, "/"+p)
			}
		}
		out, err := runHashfiles(ctx, lb, ref, "whole-reads", files...)
		if err != nil {
			t.Fatal(err)
		}
		requireOutput(t, out, probeOutput(t, img.expected, files...))
		served, total := lb.Front.BytesServed()-before, pulled.layerSize()
		t.Logf("the front served %d bytes for the pull and the reads of %d files; the image's layers are %d bytes (%.2fx)",
			served, len(files), total, float64(served)/float64(total))
		if served < total {
			t.Fatalf("the front served %d bytes, less than the %d of the layers: it did not send whole blobs, the test proves nothing", served, total)
		}
		if served*10 > total*12 {
			t.Errorf("the front served %d bytes for an image of %d: more than 1.2 times, blobs were fetched whole more than once", served, total)
		}
	})
}
