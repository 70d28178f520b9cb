package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"
	"slices"
	"sync"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
)

// Blob is a blob in a registry, opened by Resolver.Open. Its methods are
// safe for concurrent use; it holds no resources that need closing.
//
// Reads go to the host that answered last (a mirror, or the upstream), and
// straight to blob storage when the registry redirected there. When a host
// fails, the next one in hosts.toml order is tried; when a storage URL has
// expired, the registry is asked again.
type Blob struct {
	r        *Resolver
	ref      string
	spec     reference.Spec
	registry string
	repo     string
	dgst     digest.Digest
	size     int64 // set by Open before the Blob is handed out

	hosts  []docker.RegistryHost
	mu     sync.Mutex
	cur    int      // index of the host that answered last
	direct []string // per host: the storage URL its registry redirected to
}

// Size returns the size of the blob in bytes.
func (b *Blob) Size() int64 { return b.size }

// Digest returns the digest the blob was opened by.
func (b *Blob) Digest() digest.Digest { return b.dgst }

// ReadAt reads len(p) bytes at off. It returns len(p) and no error, or an
// error: io.EOF with the bytes that were there when p reaches past the end
// of the blob, otherwise an *Error (or the context's error) and 0.
func (b *Blob) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	return b.ReadAtProgress(ctx, p, off, nil)
}

// ReadAtProgress reads like ReadAt and, while the bytes arrive, calls
// progress (if not nil) with how many of p's leading bytes are in place, a
// count that only grows, so that a caller can work on the start of a long
// read while the rest is on the wire. The calls come from the goroutine
// of ReadAtProgress. On error, the bytes reported may be all there is.
func (b *Blob) ReadAtProgress(ctx context.Context, p []byte, off int64, progress func(n int)) (int, error) {
	if off < 0 || off > b.size {
		return 0, fmt.Errorf("read at %d of blob %s of size %d: %w", off, b.dgst, b.size, errdefs.ErrOutOfRange)
	}
	n := min(int64(len(p)), b.size-off)
	if n > 0 {
		s := &span{off: off, end: off + n, buf: p[:n], progress: progress}
		if err := b.readOne(ctx, s); err != nil {
			return 0, err
		}
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// readOne reads s, out of b's spool if there is one.
func (b *Blob) readOne(ctx context.Context, s *span) error {
	if sp := b.spooled(ctx); sp != nil {
		return b.readFromSpool(ctx, sp, s)
	}
	return b.readResuming(ctx, s)
}

// endpoint is the host that the next request will most likely go to.
func (b *Blob) endpoint() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if d := b.direct[b.cur]; d != "" {
		if u, err := url.Parse(d); err == nil {
			return u.Host
		}
	}
	return b.hosts[b.cur].Host
}

// fetch sends one GET for the blob with the Range header rng (none if
// empty), trying the hosts in order from the one that answered last. It
// returns only 200 and 206 answers; the caller closes the body.
func (b *Blob) fetch(ctx context.Context, rng string) (*http.Response, error) {
	if b.r.closed() {
		return nil, b.closedError()
	}
	ctx, err := docker.ContextWithRepositoryScope(ctx, b.spec, false)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", b.ref, err, errdefs.ErrInvalidArgument)
	}
	ctx = log.WithLogger(ctx, log.G(ctx).WithFields(log.Fields{"ref": b.ref, "digest": b.dgst}))
	b.mu.Lock()
	start := b.cur
	b.mu.Unlock()
	var last error
	for i := range len(b.hosts) {
		idx := (start + i) % len(b.hosts)
		hctx := ctx
		if i < len(b.hosts)-1 {
			hctx = withoutRetries(ctx) // fail over fast; retry on the last host
		}
		resp, err := b.fetchFrom(hctx, idx, rng)
		if err == nil {
			b.mu.Lock()
			b.cur = idx
			b.mu.Unlock()
			return resp, nil
		}
		if ctx.Err() != nil || !failOver(err) {
			return nil, err
		}
		if i < len(b.hosts)-1 {
			log.G(ctx).WithError(err).WithField("host", b.hosts[idx].Host).Warn("registry host failed, trying the next one")
		}
		last = err
	}
	return nil, last
}

// failOver reports whether another host may answer where this one failed:
// not for requests that no host would accept.
func failOver(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status != http.StatusBadRequest && e.Status != http.StatusRequestedRangeNotSatisfiable
}

func (b *Blob) fetchFrom(ctx context.Context, idx int, rng string) (*http.Response, error) {
	h := b.hosts[idx]
	b.mu.Lock()
	direct := b.direct[idx]
	b.mu.Unlock()
	if direct != "" {
		resp, err := b.get(ctx, h.Client, direct, nil, rng)
		if err != nil {
			return nil, b.netError(hostOf(direct), rng, err)
		}
		switch resp.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound, http.StatusGone:
			drain(resp.Body)
			b.mu.Lock()
			if b.direct[idx] == direct {
				b.direct[idx] = ""
			}
			b.mu.Unlock()
			log.G(ctx).WithFields(log.Fields{"host": resp.Request.URL.Host, "status": resp.StatusCode}).
				Info("blob storage URL expired, asking the registry again")
		default:
			return b.checkStatus(resp, rng)
		}
	}
	u := b.blobURL(h)
	resp, err := b.get(ctx, h.Client, u, h.Header, rng)
	if err != nil {
		return nil, b.netError(h.Host, rng, err)
	}
	if final := resp.Request.URL.String(); final != u && resp.StatusCode/100 == 2 {
		b.mu.Lock()
		b.direct[idx] = final
		b.mu.Unlock()
		log.G(ctx).WithFields(log.Fields{"host": h.Host, "storage": resp.Request.URL.Host}).
			Debug("registry redirects to blob storage; reading from there")
	}
	return b.checkStatus(resp, rng)
}

func (b *Blob) checkStatus(resp *http.Response, rng string) (*http.Response, error) {
	if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusPartialContent {
		return resp, nil
	}
	drain(resp.Body)
	return nil, b.statusError(resp.Request.URL.Host, rng, resp.StatusCode)
}

func (b *Blob) get(ctx context.Context, c *http.Client, u string, hdr http.Header, rng string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = slices.Clone(v)
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	log.G(ctx).WithFields(log.Fields{"host": req.URL.Host, "range": rng}).Trace("GET blob")
	return c.Do(req)
}

// blobURL is the blob's URL on registry host h; a mirror is told the
// upstream registry with the "ns" query parameter, as containerd does.
func (b *Blob) blobURL(h docker.RegistryHost) string {
	return objectURL(h, b.registry, b.repo, "blobs", b.dgst)
}

// objectURL is the URL of a blob or manifest (kind) of repository repo of
// registry on host h.
func objectURL(h docker.RegistryHost, registry, repo, kind string, dgst digest.Digest) string {
	u := url.URL{Scheme: h.Scheme, Host: h.Host, Path: path.Join("/", h.Path, repo, kind, dgst.String())}
	if h.Host != registry && (registry != "docker.io" || h.Host != "registry-1.docker.io") {
		u.RawQuery = url.Values{"ns": {registry}}.Encode()
	}
	return u.String()
}

func hostOf(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return ""
	}
	return u.Host
}
