package remote

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/log"
)

func TestRedactText(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`Get "https://s3.example/b/x?X-Amz-Signature=abc&X-Amz-Credential=k": EOF`, `Get "https://s3.example/b/x?redacted": EOF`},
		{`request to http://user:pw@reg.example:5000/v2/?a=b failed`, `request to http://reg.example:5000/v2/?redacted failed`},
		{`https://reg.example/v2/lib/img/blobs/sha256:00 (bytes=0-9)`, `https://reg.example/v2/lib/img/blobs/sha256:00 (bytes=0-9)`},
		{`url https://cdn.example/o#frag?x and no url here`, `url https://cdn.example/o and no url here`},
		{`no url: a=b?c`, `no url: a=b?c`},
	} {
		if got := redactText(tc.in); got != tc.want {
			t.Errorf("redactText(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if got := redactURL("https://u:p@s.example/o?sig=1#f"); got != "https://s.example/o?redacted" {
		t.Errorf("redactURL: %q", got)
	}
}

// captureLogs sends every log line, trace level included, to a buffer for
// the rest of the test and returns a function that reads it.
func captureLogs(t *testing.T) func() string {
	var mu sync.Mutex
	var buf bytes.Buffer
	logger := log.L.Logger
	out, level := logger.Out, logger.GetLevel()
	logger.SetOutput(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return buf.Write(p)
	}))
	if err := log.SetLevel("trace"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		logger.SetOutput(out)
		logger.SetLevel(level)
	})
	return func() string {
		mu.Lock()
		defer mu.Unlock()
		return buf.String()
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// A signed storage URL's signature and a token URL's query never appear in
// an error or a log line, whatever fails: storage gone, storage refusing,
// the token server gone. (Logs are for people; a secret in them is a leak,
// which is why this test reads them.)
func TestNoSecretsInErrorsOrLogs(t *testing.T) {
	const secret = "S3CRETSIG"
	logs := captureLogs(t)
	var errs []error

	// Storage goes away after the redirect: net/http's error quotes the URL.
	reg := newRegistry(t, 100_000)
	storage := httptest.NewServer(http.HandlerFunc(reg.serveContent))
	storageURL := storage.URL
	reg.serve = func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, storageURL+"/blobs/x?X-Amz-Signature="+secret+"&X-Amz-Expires=60", http.StatusTemporaryRedirect)
	}
	b, _ := mustOpen(t, newTestResolver(t, reg, WithRetries(1)), reg, 51)
	storage.Close()
	reg.serve = func(w http.ResponseWriter, r *http.Request) { http.Error(w, "down", http.StatusServiceUnavailable) }
	_, err := b.ReadAt(context.Background(), make([]byte, 100), 0)
	errs = append(errs, err)

	// The token server is gone: containerd's error quotes the token URL.
	reg2 := newRegistry(t, 1000)
	tokenSrv := httptest.NewServer(http.NotFoundHandler())
	realm := tokenSrv.URL + "/token?account=" + secret
	tokenSrv.Close()
	reg2.serve = func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="test"`, realm))
		http.Error(w, "auth", http.StatusUnauthorized)
	}
	_, _, err = newTestResolver(t, reg2, WithRetries(1)).Open(context.Background(), reg2.ref(), reg2.dgst, 10)
	errs = append(errs, err)
	_, err = newTestResolver(t, reg2, WithRetries(1)).Manifest(context.Background(), reg2.ref(), reg2.dgst)
	errs = append(errs, err)

	for i, err := range errs {
		if err == nil {
			t.Fatalf("case %d: no error", i)
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("case %d: error carries the secret: %v", i, err)
		}
	}
	if l := logs(); strings.Contains(l, secret) {
		t.Errorf("a log line carries the secret:\n%s", l)
	} else if !strings.Contains(l, "level=") {
		t.Errorf("no log lines captured: the test proves nothing")
	}
}
