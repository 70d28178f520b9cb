package integration

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/lazypull/lazypull/integration/testbed"
	"github.com/lazypull/lazypull/integration/testimage"
)

// faultStall is how long the front holds a stalled answer: far longer than
// the stall timeout lazypulld runs with here (3s), and than the bound a
// stalled read must finish in.
const (
	faultStall       = 60 * time.Second
	faultStallBound  = 15 * time.Second
	faultErrorBound  = 15 * time.Second
	faultRetryAfter  = 2 // seconds
	faultRetryBound  = 15 * time.Second
	faultStallConfig = "stall_timeout = \"3s\"\n"
)

// TestRegistryFaultsWhileRunning runs a container that reads files of a
// lazily pulled image, one at a time as the test names them, while the
// registry front misbehaves in one way after another. Each fault states
// what the running container must see and how soon, and checks that the
// front did play it (else the test would prove nothing). Background fetch
// is off, so that only the container's reads meet the faults.
func TestRegistryFaultsWhileRunning(t *testing.T) {
	forEachFlavour(t, func(t *testing.T, f testbed.Flavour) {
		ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
		defer cancel()
		lb := newLazyBed(t, f, lazyBedOptions{Front: true, NoBackgroundFetch: true, Remote: faultStallConfig})
		orig, img := pushDefaultImage(t, ctx, lb.Registry)
		converted := convertImage(t, ctx, orig, lb.Registry.Ref("lazypull/testimage:esgz"))
		at := payloads(t, ctx, converted)
		ref := lb.Front.Ref("lazypull/testimage:esgz")
		pullLazily(t, ctx, lb, ref)
		requireLazy(t, ctx, lb, lb.Containerd.Client(t),
			inspectImage(t, namespaces.WithNamespace(ctx, lb.Containerd.Namespace), lb.Containerd.Client(t), ref))

		rd := startPacedReader(t, ctx, lb, ref, "faults")
		good := func(t *testing.T, path string) time.Duration {
			t.Helper()
			line, took := rd.read(path)
			if want := hashLine(t, img.expected, path); line != want {
				t.Errorf("reading %s: got %q, want %q", path, line, want)
			}
			return took
		}
		eio := func(t *testing.T, path string) time.Duration {
			t.Helper()
			line, took := rd.read(path)
			if !strings.HasPrefix(line, "error "+path+": ") || !strings.Contains(line, "input/output error") {
				t.Errorf("reading %s: got %q, want an I/O error", path, line)
			}
			return took
		}
		good(t, "/data/hello") // the container runs

		t.Run("corrupt byte", func(t *testing.T) {
			// 1 byte flipped on the wire: EIO, never wrong data; a clean
			// read once the wire is clean.
			const path = "/data/chunk4m"
			layer, off := at(strings.TrimPrefix(path, "/"), 1<<20)
			lb.Front.CorruptBlob(layer, off)
			eio(t, path)
			if lb.Front.Flipped() == 0 {
				t.Fatal("the front never served the corrupted byte: the test proves nothing")
			}
			lb.Front.Uncorrupt(layer)
			good(t, path)
		})

		t.Run("stall", func(t *testing.T) {
			// An answer stalls mid-body for a minute: given up after the
			// stall timeout, asked again, the read done well within the bound.
			const path = "/data/big"
			layer, off := at(strings.TrimPrefix(path, "/"), 5<<20)
			lb.Front.StallBlob(layer, off, faultStall)
			took := good(t, path)
			if lb.Front.Stalls() != 1 {
				t.Fatalf("the front stalled %d answers, want 1: the test proves nothing", lb.Front.Stalls())
			}
			t.Logf("read of %s with an answer stalled for %v: %v", path, faultStall, took)
			if took > faultStallBound {
				t.Errorf("read of %s took %v with a stalled answer, want under %v", path, took, faultStallBound)
			}
		})

		t.Run("503 with Retry-After", func(t *testing.T) {
			// The first answers for the file's bytes are 503s: retried (or
			// failed over to the next host of hosts.toml, which here is
			// the same front), the read correct.
			const path = "/many/d08/f0850"
			layer, off := at(strings.TrimPrefix(path, "/"), 0)
			lb.Front.Unavailable(layer, off, 2, faultRetryAfter)
			took := good(t, path)
			if lb.Front.Answered503() == 0 {
				t.Fatal("the front answered no request with 503: the test proves nothing")
			}
			t.Logf("read of %s with %d answers 503 (Retry-After: %ds): %v", path, lb.Front.Answered503(), faultRetryAfter, took)
			if took > faultRetryBound {
				t.Errorf("read of %s took %v, want under %v", path, took, faultRetryBound)
			}
		})

		t.Run("registry down", func(t *testing.T) {
			// EIO soon, and the same file reads right once the registry is back.
			const path = "/many/d13/f1350"
			lb.Front.Down(true)
			took := eio(t, path)
			lb.Front.Down(false)
			t.Logf("read of %s with the registry down: EIO after %v", path, took)
			if took > faultErrorBound {
				t.Errorf("read of %s with the registry down took %v to fail, want under %v", path, took, faultErrorBound)
			}
			good(t, path)
		})

		t.Run("expired token", func(t *testing.T) {
			// A token the registry stops accepting before the expiry it was
			// given with is replaced, and the read succeeds.
			lb.Front.RequireTokens(true)
			defer lb.Front.RequireTokens(false)
			good(t, "/many/d16/f1650")
			issued := lb.Front.TokensIssued()
			if issued == 0 {
				t.Fatal("no token issued: the test proves nothing")
			}
			lb.Front.ExpireTokens()
			good(t, "/many/d18/f1850")
			if n := lb.Front.TokensIssued(); n <= issued {
				t.Errorf("%d tokens issued after the expiry, want more than %d", n, issued)
			}
		})

		t.Run("expired storage URL", func(t *testing.T) {
			// Blobs redirect to signed storage URLs; an expired one (403)
			// is resolved again at the registry. A storage host that goes
			// away fails reads with EIO, and the signature appears in no
			// log line.
			lb.Front.RedirectBlobs(true)
			defer lb.Front.RedirectBlobs(false)
			good(t, "/many/d20/f2050")
			signed, _ := lb.Front.Redirects()
			if signed == 0 {
				t.Fatal("no blob GET was redirected: the test proves nothing")
			}
			lb.Front.ExpireSignatures()
			good(t, "/many/d21/f2150")
			if again, refused := lb.Front.Redirects(); refused == 0 || again <= signed {
				t.Errorf("after the signatures expired: %d refused by storage, %d redirects (%d before): want the expired URL refused and a new one", refused, again, signed)
			}
			lb.Front.StorageDown(true)
			eio(t, "/many/d22/f2250")
			lb.Front.StorageDown(false)
			good(t, "/many/d22/f2250")
			logs, err := os.ReadFile(lb.Lazypulld.LogPath)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(logs), testbed.SignatureMarker) {
				t.Errorf("lazypulld's log (%s) carries a storage URL's signature", lb.Lazypulld.LogPath)
			}
			if !strings.Contains(string(logs), "/_storage/") {
				t.Errorf("lazypulld's log names no storage URL: the redaction check proves nothing")
			}
		})

		if !lb.Lazypulld.Running() {
			t.Error("lazypulld exited")
		}
	})
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
