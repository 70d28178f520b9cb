package remote

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"testing"
)

func TestMirrorFallOver(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mirror func(reg *registry) func(http.ResponseWriter, *http.Request)
		// blob requests seen by the mirror and the upstream: after Open,
		// and after a ReadAt
		mirrorReqs, upstreamReqs [2]int
	}{
		{"mirror serves", nil, [2]int{1, 2}, [2]int{0, 0}},
		{"mirror 503", func(*registry) func(http.ResponseWriter, *http.Request) {
			return func(w http.ResponseWriter, r *http.Request) { http.Error(w, "down", http.StatusServiceUnavailable) }
		}, [2]int{1, 1}, [2]int{1, 2}},
		{"mirror lacks the blob", func(*registry) func(http.ResponseWriter, *http.Request) {
			return http.NotFound
		}, [2]int{1, 1}, [2]int{1, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up, mirror := newRegistry(t, 10_000), newRegistry(t, 10_000)
			if tc.mirror != nil {
				mirror.serve = tc.mirror(mirror)
			}
			dir := hostsDir(t, up.host(), fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\"]\n", up.srv.URL, mirror.srv.URL))
			r, err := NewResolver(WithHostsDir(dir), WithCredentials(noCredentials), fastBackoff, WithWarmConnections(0))
			if err != nil {
				t.Fatal(err)
			}
			b, tail := mustOpen(t, r, up, 51)
			if !bytes.Equal(tail, up.blob[len(up.blob)-51:]) {
				t.Fatal("wrong tail")
			}
			check := func(i int) {
				t.Helper()
				if m, u := len(mirror.requests()), len(up.requests()); m != tc.mirrorReqs[i] || u != tc.upstreamReqs[i] {
					t.Errorf("mirror %d, upstream %d requests; want %d, %d", m, u, tc.mirrorReqs[i], tc.upstreamReqs[i])
				}
			}
			check(0)
			p := make([]byte, 100)
			if _, err := b.ReadAt(context.Background(), p, 100); err != nil || !bytes.Equal(p, up.blob[100:200]) {
				t.Fatalf("ReadAt: %v", err)
			}
			check(1)
			mirror.mu.Lock()
			q := mirror.queries
			mirror.mu.Unlock()
			if want := (url.Values{"ns": {up.host()}}).Encode(); len(q) > 0 && q[0] != want {
				t.Errorf("mirror request query %q, want ns=%s", q[0], up.host())
			}
		})
	}
}

// newTLSRegistry serves like newRegistry over HTTPS with a test CA and
// returns the path of a PEM file holding that CA.
func newTLSRegistry(t *testing.T, size int) (*registry, string) {
	t.Helper()
	blob, dgst := testBlob(size)
	reg := &registry{blob: blob, dgst: dgst}
	reg.serve = reg.serveContent
	reg.srv = httptest.NewUnstartedServer(reg)
	reg.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	reg.srv.StartTLS()
	t.Cleanup(reg.srv.Close)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: reg.srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	return reg, ca
}

// Without hosts.toml a registry is reached over verified HTTPS only, even
// on localhost; plain HTTP and other CAs come from hosts.toml.
func TestTLSAndPlainHTTP(t *testing.T) {
	plain := newRegistry(t, 1000)
	plain.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	secure, ca := newTLSRegistry(t, 1000)
	for _, tc := range []struct {
		name  string
		reg   *registry
		hosts string // hosts.toml; empty: none
		ok    bool
	}{
		{"https with the CA from hosts.toml", secure, fmt.Sprintf("server = %q\nca = %q\n", secure.srv.URL, ca), true},
		{"https with an unknown CA", secure, "", false},
		{"plain http without hosts.toml", plain, "", false},
		{"plain http when hosts.toml says https", plain, fmt.Sprintf("server = %q\n", "https://"+plain.host()), false},
		{"plain http configured in hosts.toml", plain, fmt.Sprintf("server = %q\n", plain.srv.URL), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.hosts != "" {
				dir = hostsDir(t, tc.reg.host(), tc.hosts)
			}
			r, err := NewResolver(WithHostsDir(dir), WithCredentials(noCredentials), fastBackoff, WithWarmConnections(0))
			if err != nil {
				t.Fatal(err)
			}
			before := len(tc.reg.requests())
			_, tail, err := r.Open(context.Background(), tc.reg.ref(), tc.reg.dgst, 10)
			if tc.ok != (err == nil) {
				t.Fatalf("Open: %v", err)
			}
			if tc.ok && !bytes.Equal(tail, tc.reg.blob[990:]) {
				t.Error("wrong tail")
			}
			if n := len(tc.reg.requests()) - before; !tc.ok && n != 0 {
				t.Errorf("%d requests reached the registry", n)
			}
		})
	}
}

func TestMissingHostsDirMeansDefaults(t *testing.T) {
	reg, _ := newTLSRegistry(t, 1000)
	r, err := NewResolver(WithHostsDir(filepath.Join(t.TempDir(), "missing")), WithCredentials(noCredentials), WithRetries(0))
	if err != nil {
		t.Fatal(err)
	}
	// https is tried (and fails on the test CA), not plain http.
	_, _, err = r.Open(context.Background(), reg.ref(), reg.dgst, 10)
	if err == nil {
		t.Fatal("Open succeeded against an unknown CA")
	}
	var e *Error
	if !errors.As(err, &e) || e.Host != reg.host() {
		t.Errorf("error does not name the host: %v", err)
	}
}
