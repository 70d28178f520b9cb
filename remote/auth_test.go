package remote

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/containerd/errdefs"
)

// credentials returns a credentials function that answers for one host
// and records what it was asked.
func credentials(user, secret string) (func(string) (string, string, error), func() []string) {
	var mu sync.Mutex
	var asked []string
	return func(host string) (string, string, error) {
			mu.Lock()
			defer mu.Unlock()
			asked = append(asked, host)
			return user, secret, nil
		}, func() []string {
			mu.Lock()
			defer mu.Unlock()
			return append([]string(nil), asked...)
		}
}

func TestTokenAuth(t *testing.T) {
	reg := newRegistry(t, 10_000)
	var tokens atomic.Int32
	tokenSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tokens.Add(1)
		r.ParseForm()
		// With a secret, containerd uses the OAuth password grant first.
		if r.Method != http.MethodPost || r.Form.Get("username") != "alice" || r.Form.Get("password") != "s3cret" ||
			r.Form.Get("scope") != "repository:"+testRepo+":pull" || r.Form.Get("service") != "test" {
			http.Error(w, "denied", http.StatusUnauthorized)
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"access_token": "tok", "expires_in": 300})
	}))
	t.Cleanup(tokenSrv.Close)
	serve := reg.serve
	reg.serve = func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="test",scope="repository:%s:pull"`, tokenSrv.URL+"/token", testRepo))
			http.Error(w, "auth", http.StatusUnauthorized)
			return
		}
		serve(w, r)
	}

	creds, asked := credentials("alice", "s3cret")
	b, tail := mustOpen(t, newTestResolver(t, reg, WithCredentials(creds)), reg, 51)
	if !bytes.Equal(tail, reg.blob[len(reg.blob)-51:]) {
		t.Fatal("wrong tail")
	}
	p := make([]byte, 100)
	if _, err := b.ReadAt(context.Background(), p, 1000); err != nil || !bytes.Equal(p, reg.blob[1000:1100]) {
		t.Fatalf("ReadAt: %v", err)
	}
	// 401, retry with the token, then the read with the cached token.
	if n := len(reg.requests()); n != 3 {
		t.Errorf("%d blob requests, want 3", n)
	}
	if tokens.Load() != 1 {
		t.Errorf("%d token requests, want 1", tokens.Load())
	}
	if got := asked(); len(got) != 1 || got[0] != reg.host() {
		t.Errorf("credentials asked for %q, want [%s]", got, reg.host())
	}

	bad, _ := credentials("alice", "wrong")
	_, _, err := newTestResolver(t, reg, WithCredentials(bad)).Open(context.Background(), reg.ref(), reg.dgst, 51)
	if !errdefs.IsPermissionDenied(err) || IsTemporary(err) {
		t.Errorf("Open with wrong credentials: %v, want permission denied", err)
	}
}

func TestBasicAuth(t *testing.T) {
	reg := newRegistry(t, 10_000)
	serve := reg.serve
	reg.serve = func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "bob" || p != "pw" {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, "auth", http.StatusUnauthorized)
			return
		}
		serve(w, r)
	}
	for _, tc := range []struct {
		name, user, secret string
		ok                 bool
	}{
		{"right", "bob", "pw", true},
		{"wrong", "bob", "nope", false},
		{"none", "", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			creds, _ := credentials(tc.user, tc.secret)
			before := len(reg.requests())
			_, tail, err := newTestResolver(t, reg, WithCredentials(creds)).Open(context.Background(), reg.ref(), reg.dgst, 10)
			if tc.ok != (err == nil) {
				t.Fatalf("Open: %v", err)
			}
			if !tc.ok && !errdefs.IsPermissionDenied(err) {
				t.Errorf("Open: %v, want permission denied", err)
			}
			if tc.ok && !bytes.Equal(tail, reg.blob[len(reg.blob)-10:]) {
				t.Error("wrong tail")
			}
			if n := len(reg.requests()) - before; n > 2 {
				t.Errorf("%d requests, want at most 2 (one retry after the 401)", n)
			}
		})
	}
}

// The registry redirects to blob storage; reads go straight to storage
// until its URL expires (storage answers 403, or 404 as some do), then the
// registry is asked once more.
func TestRedirectToStorage(t *testing.T) {
	for _, expired := range []int{http.StatusForbidden, http.StatusNotFound} {
		t.Run(strconv.Itoa(expired), func(t *testing.T) { testRedirectToStorage(t, expired) })
	}
}

func testRedirectToStorage(t *testing.T, expired int) {
	reg := newRegistry(t, 100_000)
	var sig, valid atomic.Int64
	var storageReqs atomic.Int32
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		storageReqs.Add(1)
		if r.Header.Get("Authorization") != "" {
			t.Error("credentials sent to storage")
		}
		if r.URL.Query().Get("sig") != fmt.Sprint(valid.Load()) {
			http.Error(w, "expired", expired)
			return
		}
		reg.serveContent(w, r)
	}))
	t.Cleanup(storage.Close)
	reg.serve = func(w http.ResponseWriter, r *http.Request) {
		s := sig.Add(1)
		valid.Store(s)
		http.Redirect(w, r, fmt.Sprintf("%s/blobs/x?sig=%d", storage.URL, s), http.StatusTemporaryRedirect)
	}
	b, tail := mustOpen(t, newTestResolver(t, reg), reg, 51)
	if !bytes.Equal(tail, reg.blob[len(reg.blob)-51:]) {
		t.Fatal("wrong tail")
	}
	read := func(off int64) {
		t.Helper()
		p := make([]byte, 1000)
		if _, err := b.ReadAt(context.Background(), p, off); err != nil || !bytes.Equal(p, reg.blob[off:off+1000]) {
			t.Fatalf("ReadAt(%d): %v", off, err)
		}
	}
	check := func(wantReg, wantStorage int) {
		t.Helper()
		if n := len(reg.requests()); n != wantReg || int(storageReqs.Load()) != wantStorage {
			t.Errorf("registry %d, storage %d requests; want %d, %d", n, storageReqs.Load(), wantReg, wantStorage)
		}
	}
	check(1, 1)
	read(5000)
	check(1, 2) // straight to storage
	valid.Store(-1)
	read(6000)
	check(2, 4) // refused by storage, registry again, new storage URL
	read(7000)
	check(2, 5)
}

// A token that the registry stops accepting before the expiry the token
// server gave (revoked, or a registry whose clock runs ahead) is replaced:
// the 401 makes the authorizer fetch a new token and the read is tried
// again, whether or not the challenge says error="invalid_token".
func TestExpiredTokenIsRefreshed(t *testing.T) {
	for _, tc := range []struct {
		name  string
		extra string // added to the challenge
	}{
		{"plain challenge", ""},
		{"invalid_token challenge", `,error="invalid_token"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := newRegistry(t, 10_000)
			var issued, validFrom atomic.Int32
			tokenSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n := issued.Add(1)
				json.NewEncoder(w).Encode(map[string]any{"token": fmt.Sprintf("tok-%d", n), "expires_in": 3600})
			}))
			t.Cleanup(tokenSrv.Close)
			serve := reg.serve
			reg.serve = func(w http.ResponseWriter, r *http.Request) {
				var n int32
				if _, err := fmt.Sscanf(r.Header.Get("Authorization"), "Bearer tok-%d", &n); err != nil || n < validFrom.Load() {
					extra := ""
					if err == nil {
						extra = tc.extra
					}
					w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="test",scope="repository:%s:pull"%s`, tokenSrv.URL+"/token", testRepo, extra))
					http.Error(w, "auth", http.StatusUnauthorized)
					return
				}
				serve(w, r)
			}
			b, _ := mustOpen(t, newTestResolver(t, reg), reg, 51)
			read := func(off int64) {
				t.Helper()
				p := make([]byte, 100)
				if _, err := b.ReadAt(context.Background(), p, off); err != nil || !bytes.Equal(p, reg.blob[off:off+100]) {
					t.Fatalf("ReadAt(%d): %v", off, err)
				}
			}
			read(1000)
			if n := issued.Load(); n != 1 {
				t.Fatalf("%d tokens issued, want 1", n)
			}
			validFrom.Store(2) // tok-1 expires
			before := len(reg.requests())
			read(2000)
			if n := issued.Load(); n != 2 {
				t.Errorf("%d tokens issued, want 2: one new after the 401", n)
			}
			if n := len(reg.requests()) - before; n != 2 {
				t.Errorf("%d requests for the read, want 2: the 401 and the retry", n)
			}
			read(3000) // with the new token, in one request
			if n := issued.Load(); n != 2 {
				t.Errorf("%d tokens issued, want 2", n)
			}
			// Concurrent reads meet the next expiry together (which,
			// under -race, checks that they authorize without a race).
			validFrom.Store(3)
			var wg sync.WaitGroup
			for i := range 8 {
				wg.Go(func() {
					p := make([]byte, 100)
					off := int64(4000 + 100*i)
					if _, err := b.ReadAt(context.Background(), p, off); err != nil || !bytes.Equal(p, reg.blob[off:off+100]) {
						t.Errorf("concurrent ReadAt(%d): %v", off, err)
					}
				})
			}
			wg.Wait()
		})
	}
}
