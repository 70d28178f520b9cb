package remote

import (
	"context"
	"net/http"
	"testing"

	"github.com/containerd/errdefs"
)

// repoCredentials is a CredentialSource holding credentials for one
// repository of one registry.
type repoCredentials struct{ host, repo, user, secret string }

func (c repoCredentials) Credentials(host, repo string) (string, string, bool) {
	if host != c.host || repo != c.repo {
		return "", "", false
	}
	return c.user, c.secret, true
}

// A credential source's credentials for a repository open its blobs, and
// only its: credentials of another repository or registry are not used,
// and docker's config.json (here: none) is the fallback.
func TestCredentialSource(t *testing.T) {
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
		name string
		src  repoCredentials
		ok   bool
	}{
		{"this repository", repoCredentials{reg.host(), testRepo, "bob", "pw"}, true},
		{"another repository", repoCredentials{reg.host(), testRepo + "-other", "bob", "pw"}, false},
		{"another registry", repoCredentials{"elsewhere.example", testRepo, "bob", "pw"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newTestResolver(t, reg, WithCredentialSource(tc.src))
			_, _, err := r.Open(context.Background(), reg.ref(), reg.dgst, 10)
			if tc.ok && err != nil {
				t.Fatalf("Open: %v", err)
			}
			if !tc.ok && !errdefs.IsPermissionDenied(err) {
				t.Fatalf("Open: %v, want permission denied", err)
			}
		})
	}
}
