package remote

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestOpenReadsSizeAndTailInOneRequest(t *testing.T) {
	for _, tc := range []struct {
		name       string
		size       int
		tail, want int64
	}{
		{"footer", 100_000, 51, 51},
		{"tail larger than blob", 30, 100, 30},
		{"no tail", 1000, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := newRegistry(t, tc.size)
			b, data := mustOpen(t, newTestResolver(t, reg), reg, tc.tail)
			if b.Size() != int64(tc.size) {
				t.Errorf("Size() = %d, want %d", b.Size(), tc.size)
			}
			if !bytes.Equal(data, reg.blob[int64(tc.size)-tc.want:]) {
				t.Errorf("tail: got %d bytes, not the last %d of the blob", len(data), tc.want)
			}
			want := []string{"bytes=-" + strconv.FormatInt(max(tc.tail, 1), 10)}
			if got := reg.requests(); strings.Join(got, " ") != strings.Join(want, " ") || reg.other != 0 {
				t.Errorf("requests %q (+%d others), want %q", got, reg.other, want)
			}
		})
	}
}

// OpenSized costs no request: a layer whose TOC is stored is mounted
// again without the network; its reads then go to the registry.
func TestOpenSizedMakesNoRequest(t *testing.T) {
	reg := newRegistry(t, 100_000)
	r := newTestResolver(t, reg)
	b, err := r.OpenSized(context.Background(), reg.ref(), reg.dgst, int64(len(reg.blob)))
	if err != nil {
		t.Fatal(err)
	}
	if got := reg.requests(); len(got) != 0 || reg.other != 0 {
		t.Fatalf("OpenSized made requests: %q (+%d others)", got, reg.other)
	}
	p := make([]byte, 1000)
	if _, err := b.ReadAt(context.Background(), p, 5000); err != nil || !bytes.Equal(p, reg.blob[5000:6000]) {
		t.Errorf("ReadAt after OpenSized: %v", err)
	}
	if _, err := r.OpenSized(context.Background(), reg.ref(), reg.dgst, -1); !errdefs.IsInvalidArgument(err) {
		t.Errorf("OpenSized with a negative size: %v, want invalid argument", err)
	}
}

func TestReadAtRandomOffsets(t *testing.T) {
	reg := newRegistry(t, 1<<20)
	b, _ := mustOpen(t, newTestResolver(t, reg), reg, 10)
	rnd := rand.New(rand.NewPCG(1, 2))
	for range 50 {
		off := rnd.Int64N(b.Size())
		p := make([]byte, rnd.Int64N(min(64<<10, b.Size()-off))+1)
		n, err := b.ReadAt(context.Background(), p, off)
		if err != nil || n != len(p) {
			t.Fatalf("ReadAt(%d, %d) = %d, %v", off, len(p), n, err)
		}
		if !bytes.Equal(p, reg.blob[off:off+int64(n)]) {
			t.Fatalf("ReadAt(%d, %d): wrong bytes", off, len(p))
		}
	}
	// Past the end: what is there, then io.EOF.
	p := make([]byte, 100)
	n, err := b.ReadAt(context.Background(), p, b.Size()-10)
	if n != 10 || err != io.EOF || !bytes.Equal(p[:n], reg.blob[len(reg.blob)-10:]) {
		t.Errorf("ReadAt past the end = %d, %v", n, err)
	}
	if _, err := b.ReadAt(context.Background(), p, b.Size()+1); !errdefs.IsOutOfRange(err) {
		t.Errorf("ReadAt beyond the end: %v, want out of range", err)
	}
}

// Each read is one single-range request, whatever the host does with
// ranges: one that answers only the first range of a request, as
// go-containerregistry's registry and many CDNs do, serves every read.
func TestReadIsOneRangeRequest(t *testing.T) {
	for _, tc := range []struct {
		name  string
		serve func(reg *registry) func(http.ResponseWriter, *http.Request)
	}{
		{"ServeContent", nil},
		{"first range only", func(reg *registry) func(http.ResponseWriter, *http.Request) {
			return serveFirstRange(reg.blob, 0)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := newRegistry(t, 1<<20)
			if tc.serve != nil {
				reg.serve = tc.serve(reg)
			}
			b, _ := mustOpen(t, newTestResolver(t, reg), reg, 10)
			var want []string
			for _, r := range []struct{ off, n int64 }{{900_000, 100}, {10, 5000}, {500_000, 4096}} {
				p := make([]byte, r.n)
				if _, err := b.ReadAt(context.Background(), p, r.off); err != nil || !bytes.Equal(p, reg.blob[r.off:r.off+r.n]) {
					t.Fatalf("ReadAt(%d, %d): %v", r.off, r.n, err)
				}
				want = append(want, fmt.Sprintf("bytes=%d-%d", r.off, r.off+r.n-1))
			}
			if got := reg.requests()[1:]; strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("requests after the open %q, want %q", got, want)
			}
		})
	}
}

// A multipart/byteranges answer to a single range (which RFC 9110 forbids)
// carries no Content-Range of its own: its bytes are not trusted.
func TestMultipartAnswerIsRejected(t *testing.T) {
	reg := newRegistry(t, 10_000)
	b, _ := mustOpen(t, newTestResolver(t, reg), reg, 10)
	reg.serve = func(w http.ResponseWriter, r *http.Request) {
		const boundary = "XYZ"
		w.Header().Set("Content-Type", "multipart/byteranges; boundary="+boundary)
		w.WriteHeader(http.StatusPartialContent)
		fmt.Fprintf(w, "--%s\r\nContent-Range: bytes 100-109/10000\r\n\r\n%s\r\n--%s--\r\n", boundary, reg.blob[100:110], boundary)
	}
	n, err := b.ReadAt(context.Background(), make([]byte, 10), 100)
	if n != 0 || !errdefs.IsDataLoss(err) || !strings.Contains(err.Error(), "registry returned bytes (no Content-Range) for request 100-109") {
		t.Errorf("ReadAt = %d, %v", n, err)
	}
}

func TestLyingContentRange(t *testing.T) {
	reg := newRegistry(t, 10_000)
	b, _ := mustOpen(t, newTestResolver(t, reg), reg, 10)
	reg.serve = serveFirstRange(reg.blob, 1) // off by one
	p := make([]byte, 10)
	n, err := b.ReadAt(context.Background(), p, 100)
	if n != 0 || err == nil {
		t.Fatalf("ReadAt = %d, %v; want an error", n, err)
	}
	msg := err.Error()
	for _, want := range []string{"registry returned bytes 101-110/10000 for request 100-109", reg.dgst.String(), reg.ref(), reg.host()} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not say %q", msg, want)
		}
	}
	if !errdefs.IsDataLoss(err) || IsTemporary(err) {
		t.Errorf("error class: %v", err)
	}
	if !bytes.Equal(p, make([]byte, 10)) {
		t.Error("ReadAt wrote untrusted bytes")
	}
	// Open too.
	_, _, err = newTestResolver(t, reg).Open(context.Background(), reg.ref(), reg.dgst, 51)
	if !errdefs.IsDataLoss(err) {
		t.Errorf("Open with lying Content-Range: %v", err)
	}
}

// serveHalf answers a range request of reg's 10,000-byte blob with the
// right headers and half the body.
func serveHalf(reg *registry) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		start, end, _ := firstRange(r.Header.Get("Range"), 10_000)
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/10000", start, end))
		w.Header().Set("Content-Length", strconv.FormatInt(end-start+1, 10))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(reg.blob[start : start+(end-start)/2])
	}
}

func TestShortBody(t *testing.T) {
	reg := newRegistry(t, 10_000)
	b, _ := mustOpen(t, newTestResolver(t, reg), reg, 10)
	reg.serve = serveHalf(reg)
	n, err := b.ReadAt(context.Background(), make([]byte, 1000), 0)
	if n != 0 || err == nil || !IsTemporary(err) || !errdefs.IsUnavailable(err) {
		t.Errorf("ReadAt of a short body = %d, %v", n, err)
	}
}

// A caller of ReadAtProgress may work on the start of a read while the
// rest is on the wire: it is told, in order, how much has arrived, and
// never of bytes that are not in place or that an answer failed to bring.
func TestReadAtProgress(t *testing.T) {
	const size = 4 << 20
	for _, tc := range []struct {
		name  string
		serve func(reg *registry) func(http.ResponseWriter, *http.Request)
	}{
		{"ranges", nil},
		// Without a spool (spool_test.go tests reads of one): read out of
		// the whole answer as it streams by.
		{"whole blob", func(reg *registry) func(http.ResponseWriter, *http.Request) { return serveWhole(reg.blob) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := newRegistry(t, size)
			b, _ := mustOpen(t, newTestResolver(t, reg, WithSpool(t.TempDir(), 0)), reg, 10)
			if tc.serve != nil {
				reg.serve = tc.serve(reg)
			}
			const off = 12345
			p := make([]byte, 3<<20)
			var calls []int
			n, err := b.ReadAtProgress(context.Background(), p, off, func(n int) {
				if len(calls) > 0 && n <= calls[len(calls)-1] {
					t.Errorf("progress went from %d to %d", calls[len(calls)-1], n)
				}
				if !bytes.Equal(p[:n], reg.blob[off:off+n]) {
					t.Errorf("progress(%d): those bytes are not in place", n)
				}
				calls = append(calls, n)
			})
			if err != nil || n != len(p) || !bytes.Equal(p, reg.blob[off:off+len(p)]) {
				t.Fatalf("ReadAtProgress = %d, %v", n, err)
			}
			if len(calls) < 2 || calls[len(calls)-1] != len(p) {
				t.Errorf("progress calls %v: want several, the last %d", calls, len(p))
			}
		})
	}
	t.Run("short body", func(t *testing.T) {
		// Every answer brings half of what is asked: each retry asks for
		// the rest, and the progress never runs ahead of what came.
		reg := newRegistry(t, 10_000)
		b, _ := mustOpen(t, newTestResolver(t, reg, WithRetries(2)), reg, 10)
		reg.serve = serveHalf(reg)
		p := make([]byte, 1000)
		most := 0
		_, err := b.ReadAtProgress(context.Background(), p, 0, func(n int) {
			if !bytes.Equal(p[:n], reg.blob[:n]) {
				t.Errorf("progress(%d): those bytes are not in place", n)
			}
			most = n
		})
		// 499 of 1000, then 250 of 501, then 125 of 251.
		if err == nil || !errdefs.IsUnavailable(err) || most != 874 {
			t.Errorf("short body: %v, progress reached %d of 1000 (874 sent)", err, most)
		}
		if got, want := strings.Join(reg.requests()[1:], " "), "bytes=0-999 bytes=499-999 bytes=749-999"; got != want {
			t.Errorf("requests %s, want %s", got, want)
		}
	})
	t.Run("lying range", func(t *testing.T) {
		reg := newRegistry(t, 10_000)
		b, _ := mustOpen(t, newTestResolver(t, reg), reg, 10)
		reg.serve = serveFirstRange(reg.blob, 1)
		_, err := b.ReadAtProgress(context.Background(), make([]byte, 10), 100, func(n int) {
			t.Errorf("progress(%d) for an answer with the wrong range", n)
		})
		if !errdefs.IsDataLoss(err) {
			t.Errorf("lying Content-Range: %v", err)
		}
	})
}
