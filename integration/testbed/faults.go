package testbed

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// The faults a Front can play, each a way registries, object storage and
// the networks between them are seen to misbehave. They apply from the
// call that sets them on, to every client of the front (containerd's
// pulls included), until turned off.

// SignatureMarker starts the signature of every signed storage URL the
// front hands out, so that a test can look for it where it must not be.
const SignatureMarker = "SIGNATUREa9f3c"

// storagePrefix is the path of the front's play object storage.
const storagePrefix = "/_storage"

type faults struct {
	down        bool
	storageDown bool
	ignoreRange bool
	stalls      []*stallRule
	stalled     int
	unavailable []*unavailableRule
	answered503 int

	tokens      bool
	tokensFrom  int // tokens numbered lower are expired
	issued      int
	redirect    bool
	sigsFrom    int // signatures numbered lower are expired
	signed      int
	refused     int // storage requests refused as expired
	blobGets    int
	tokenDenied int
}

type stallRule struct {
	dgst digest.Digest
	off  int64
	d    time.Duration
}

type unavailableRule struct {
	dgst       digest.Digest
	off        int64
	n          int
	retryAfter int
}

// Down makes the front drop every connection as soon as a request arrives
// on it, as a registry that is down or unreachable does, until Down(false).
func (f *Front) Down(down bool) { f.set(func(x *faults) { x.down = down }) }

// StorageDown does what Down does, for the front's object storage only
// (see RedirectBlobs).
func (f *Front) StorageDown(down bool) { f.set(func(x *faults) { x.storageDown = down }) }

// IgnoreRange makes the front strip the Range header of blob requests, so
// that the registry answers each with the whole blob (200), as some
// registries and proxies do.
func (f *Front) IgnoreRange(ignore bool) { f.set(func(x *faults) { x.ignoreRange = ignore }) }

// StallBlob makes the next answer for blob dgst whose body carries blob
// offset off send its bytes up to off, then nothing for d (or until the
// client goes away), then the rest.
func (f *Front) StallBlob(dgst digest.Digest, off int64, d time.Duration) {
	f.set(func(x *faults) { x.stalls = append(x.stalls, &stallRule{dgst: dgst, off: off, d: d}) })
}

// Stalls returns how many answers the front has stalled.
func (f *Front) Stalls() int { return f.get(func(x *faults) int { return x.stalled }) }

// Unavailable makes the front answer the next n requests for blob dgst
// whose Range covers offset off with 503 Service Unavailable and
// Retry-After: retryAfter (seconds).
func (f *Front) Unavailable(dgst digest.Digest, off int64, n, retryAfter int) {
	f.set(func(x *faults) {
		x.unavailable = append(x.unavailable, &unavailableRule{dgst: dgst, off: off, n: n, retryAfter: retryAfter})
	})
}

// Answered503 returns how many requests Unavailable has answered.
func (f *Front) Answered503() int { return f.get(func(x *faults) int { return x.answered503 }) }

// RequireTokens turns bearer token authentication on (or off): requests
// to /v2/ need a token from the front's token server (/token, anonymous),
// else they get 401 with a challenge naming it. The token server says
// tokens last an hour; ExpireTokens ends them early, as a registry that
// revokes tokens or whose clock runs ahead does. Its challenges carry no
// error="invalid_token", as some registries' do not.
func (f *Front) RequireTokens(on bool) { f.set(func(x *faults) { x.tokens = on }) }

// ExpireTokens makes every token issued so far invalid.
func (f *Front) ExpireTokens() { f.set(func(x *faults) { x.tokensFrom = x.issued + 1 }) }

// TokensIssued returns how many tokens the token server has issued.
func (f *Front) TokensIssued() int { return f.get(func(x *faults) int { return x.issued }) }

// RedirectBlobs makes the front answer blob GETs (or stop answering them,
// with false) with a redirect to a signed URL of its play object storage,
// as registries redirect to S3 or a CDN. The storage serves a URL until
// ExpireSignatures, then answers 403, as expired signed URLs do. The
// signature starts with SignatureMarker.
func (f *Front) RedirectBlobs(on bool) { f.set(func(x *faults) { x.redirect = on }) }

// ExpireSignatures makes every storage URL handed out so far expire.
func (f *Front) ExpireSignatures() { f.set(func(x *faults) { x.sigsFrom = x.signed + 1 }) }

// Redirects returns how many blob GETs the front has redirected, and how
// many storage requests it has refused as expired.
func (f *Front) Redirects() (redirected, refused int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.faults.signed, f.faults.refused
}

// BlobGets returns how many blob GETs have reached the front (storage
// requests included).
func (f *Front) BlobGets() int { return f.get(func(x *faults) int { return x.blobGets }) }

func (f *Front) set(fn func(*faults)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(&f.faults)
}

func (f *Front) get(fn func(*faults) int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fn(&f.faults)
}

var repoPath = regexp.MustCompile(`^/v2/(.+)/(blobs|manifests)/`)

// ServeHTTP plays the faults that are on, then passes the request on.
func (f *Front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	storage := strings.HasPrefix(r.URL.Path, storagePrefix+"/")
	f.mu.Lock()
	x := &f.faults
	down := x.down || storage && x.storageDown
	isBlob := r.Method == http.MethodGet && blobPath.MatchString(strings.TrimPrefix(r.URL.Path, storagePrefix))
	if isBlob && !down {
		x.blobGets++
	}
	f.mu.Unlock()
	switch {
	case down:
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				conn.Close()
				return
			}
		}
		http.Error(w, "down", http.StatusBadGateway)
	case r.URL.Path == "/token":
		f.issueToken(w)
	case storage:
		f.serveStorage(w, r)
	case !f.authorized(w, r):
	case isBlob && f.redirectBlob(w, r):
	case isBlob && f.unavailable(w, r):
	case !f.wait(r):
		http.Error(w, "front: request cancelled while held", http.StatusServiceUnavailable)
	default:
		f.proxy.ServeHTTP(w, r)
	}
}

func (f *Front) issueToken(w http.ResponseWriter) {
	f.mu.Lock()
	f.faults.issued++
	n := f.faults.issued
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"token": fmt.Sprintf("tok-%d", n), "expires_in": 3600})
}

// authorized answers 401 and returns false unless tokens are off or r
// carries a valid one.
func (f *Front) authorized(w http.ResponseWriter, r *http.Request) bool {
	f.mu.Lock()
	on, from := f.faults.tokens, f.faults.tokensFrom
	f.mu.Unlock()
	if !on || !strings.HasPrefix(r.URL.Path, "/v2/") {
		return true
	}
	var n int
	if _, err := fmt.Sscanf(r.Header.Get("Authorization"), "Bearer tok-%d", &n); err == nil && n >= from {
		return true
	}
	challenge := fmt.Sprintf(`Bearer realm="http://%s/token",service="front"`, f.Host)
	if m := repoPath.FindStringSubmatch(r.URL.Path); m != nil {
		challenge += fmt.Sprintf(`,scope="repository:%s:pull"`, m[1])
	}
	f.mu.Lock()
	f.faults.tokenDenied++
	f.mu.Unlock()
	w.Header().Set("WWW-Authenticate", challenge)
	http.Error(w, "unauthorized", http.StatusUnauthorized)
	return false
}

func (f *Front) redirectBlob(w http.ResponseWriter, r *http.Request) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.faults.redirect {
		return false
	}
	f.faults.signed++
	q := url.Values{"X-Signature": {fmt.Sprintf("%s-%d", SignatureMarker, f.faults.signed)}, "X-Expires": {"300"}}
	http.Redirect(w, r, "http://"+f.Host+storagePrefix+r.URL.Path+"?"+q.Encode(), http.StatusTemporaryRedirect)
	return true
}

// serveStorage serves a signed storage URL: the blob at the path after the
// prefix, or 403 if the signature has expired.
func (f *Front) serveStorage(w http.ResponseWriter, r *http.Request) {
	var n int
	_, err := fmt.Sscanf(r.URL.Query().Get("X-Signature"), SignatureMarker+"-%d", &n)
	f.mu.Lock()
	expired := err != nil || n < f.faults.sigsFrom
	if expired {
		f.faults.refused++
	}
	f.mu.Unlock()
	if expired {
		http.Error(w, "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>", http.StatusForbidden)
		return
	}
	out := r.Clone(r.Context())
	out.URL.Path = strings.TrimPrefix(r.URL.Path, storagePrefix)
	out.URL.RawPath, out.URL.RawQuery, out.RequestURI = "", "", ""
	f.proxy.ServeHTTP(w, out)
}

// unavailable answers r with 503 if an Unavailable rule covers it.
func (f *Front) unavailable(w http.ResponseWriter, r *http.Request) bool {
	m := blobPath.FindStringSubmatch(r.URL.Path)
	f.mu.Lock()
	var rule *unavailableRule
	for _, u := range f.faults.unavailable {
		if u.n > 0 && string(u.dgst) == m[1] && rangeCovers(r.Header.Get("Range"), u.off) {
			rule = u
			u.n--
			f.faults.answered503++
			break
		}
	}
	f.mu.Unlock()
	if rule == nil {
		return false
	}
	w.Header().Set("Retry-After", strconv.Itoa(rule.retryAfter))
	http.Error(w, "try later", http.StatusServiceUnavailable)
	return true
}

// rangeCovers reports whether Range header h names offset off (suffix
// ranges never do: they need the blob's size).
func rangeCovers(h string, off int64) bool {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok {
		return false
	}
	for _, part := range strings.Split(spec, ",") {
		a, b, ok := strings.Cut(strings.TrimSpace(part), "-")
		if !ok || a == "" {
			continue
		}
		first, err := strconv.ParseInt(a, 10, 64)
		if err != nil {
			continue
		}
		last := int64(1<<63 - 1)
		if b != "" {
			if last, err = strconv.ParseInt(b, 10, 64); err != nil {
				continue
			}
		}
		if first <= off && off <= last {
			return true
		}
	}
	return false
}

// takeStall returns the stall rule for an answer for blob dgst whose body
// covers [start, end) and removes it, or nil.
func (f *Front) takeStall(dgst digest.Digest, start, end int64) *stallRule {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, s := range f.faults.stalls {
		if s.dgst == dgst && start <= s.off && s.off < end {
			f.faults.stalls = append(f.faults.stalls[:i], f.faults.stalls[i+1:]...)
			f.faults.stalled++
			return s
		}
	}
	return nil
}
