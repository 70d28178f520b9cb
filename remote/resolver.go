// Package remote gives random access to layer blobs in OCI/Docker
// registries: open a blob with one request that also returns its tail, then
// read any byte ranges of it with HTTP Range requests.
//
// It owns everything between a blob digest and its bytes: registry hosts,
// mirrors and TLS from containerd's hosts.toml directory, authentication
// (containerd's docker authorizer with credentials from docker's
// config.json and credential helpers by default, tokens renewed when a
// registry stops accepting them), redirects to blob storage (asked again
// when a storage URL expires), retries of temporary failures, answers that
// stall or break off (asked again for the rest), and checking every answer
// (status, Content-Range, length) so that no byte is ever returned for the
// wrong offset. Registries differ in how they answer range requests; what a
// host was seen to do (ignore ranges, reject suffix ranges) is remembered
// per host for the life of the Resolver, and a blob from a host that ignores ranges is fetched whole
// once, into a spool file that serves its reads.
//
// Errors are *Error values carrying an errdefs class and Temporary(). No
// error or log line carries a URL's query string or userinfo.
package remote

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	digest "github.com/opencontainers/go-digest"
)

// DefaultHostsDir is containerd's default config_path for hosts.toml files.
const DefaultHostsDir = "/etc/containerd/certs.d"

type options struct {
	hostsDir    string
	credentials func(host string) (string, string, error)
	source      CredentialSource
	timeout     time.Duration
	stall       time.Duration
	retries     int
	userAgent   string
	backoffBase time.Duration
	backoffMax  time.Duration
	warm        int
	spoolDir    string
	spoolMax    int64
	observer    Observer
}

// Option configures a Resolver.
type Option func(*options) error

// WithHostsDir sets the containerd hosts.toml directory (containerd's
// config_path; default DefaultHostsDir; "" for none). A registry without a
// directory there, or a missing directory, gets the defaults: HTTPS only. Plain HTTP,
// mirrors, CAs, client certificates and headers come only from hosts.toml.
func WithHostsDir(dir string) Option {
	return func(o *options) error {
		o.hostsDir = dir
		return nil
	}
}

// WithCredentials sets the function that returns the user name and secret
// (password, or identity token with an empty user) for a registry host.
// The default reads docker's config.json and its credential helpers.
func WithCredentials(f func(host string) (user, secret string, err error)) Option {
	return func(o *options) error {
		if f == nil {
			return fmt.Errorf("nil credentials function: %w", errdefs.ErrInvalidArgument)
		}
		o.credentials = f
		return nil
	}
}

// WithRequestTimeout bounds the wait for the status and headers of each
// HTTP response (default 30s); the body is bounded by WithStallTimeout
// instead. Retries get a fresh timeout each.
func WithRequestTimeout(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("request timeout %v: %w", d, errdefs.ErrInvalidArgument)
		}
		o.timeout = d
		return nil
	}
}

// WithStallTimeout sets how long a response body may bring no byte before
// it is given up as stalled (default 3s): a read of a blob then asks again
// for the bytes it is still missing, up to WithRetries times. Only waits
// for bytes count, not the whole transfer: a large body on a slow link that
// keeps bringing bytes is never cut off.
func WithStallTimeout(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("stall timeout %v: %w", d, errdefs.ErrInvalidArgument)
		}
		o.stall = d
		return nil
	}
}

// WithRetries sets how many times a request that failed temporarily
// (network error, 408, 429, 5xx) is tried again, with exponential backoff
// and jitter (default 3), and how many times a read whose answer broke off
// (stalled, cut, short) asks again for what it is missing. Other failures
// are never retried.
func WithRetries(n int) Option {
	return func(o *options) error {
		if n < 0 {
			return fmt.Errorf("retries %d: %w", n, errdefs.ErrInvalidArgument)
		}
		o.retries = n
		return nil
	}
}

// WithUserAgent sets the User-Agent header of every request.
func WithUserAgent(ua string) Option {
	return func(o *options) error {
		o.userAgent = ua
		return nil
	}
}

// WithWarmConnections sets how many connections to a registry host are
// opened ahead of need when a blob is first opened there (and again once
// idle connections may have been closed), so that the bursts of reads of a
// starting container do not wait for TCP and TLS handshakes: each costs
// one more round trip or two. 0 turns it off.
func WithWarmConnections(n int) Option {
	return func(o *options) error {
		if n < 0 {
			return fmt.Errorf("warm connections %d: %w", n, errdefs.ErrInvalidArgument)
		}
		o.warm = n
		return nil
	}
}

// WithSpool sets where and how much of whole blobs are kept from hosts
// that ignore range requests (default: the system's temporary directory,
// 2 GiB in all; 0 turns it off). Such a host answers every read with the
// whole blob; its first whole answer for a blob is written to a file in dir
// as it arrives, and every read of the blob is served from there, so that
// the blob crosses the network once. Files are unlinked on creation and
// private; beyond max, the least recently read go first, and one nobody has
// read for 10 minutes is dropped. A blob larger than max is read as before,
// windows cut out of whole answers.
func WithSpool(dir string, max int64) Option {
	return func(o *options) error {
		if max < 0 {
			return fmt.Errorf("spool size %d: %w", max, errdefs.ErrInvalidArgument)
		}
		if dir == "" {
			dir = os.TempDir()
		}
		o.spoolDir, o.spoolMax = dir, max
		return nil
	}
}

// Resolver opens blobs in registries. It is safe for concurrent use. Host
// configuration is read from the hosts directory once per registry and
// kept, with its connections and tokens, for the life of the Resolver.
// Close stops its downloads and removes its spool files.
type Resolver struct {
	opts      options
	configure docker.RegistryHosts
	spools    *spools

	mu        sync.Mutex
	hosts     map[string][]docker.RegistryHost // by registry name in the ref
	repoHosts map[string][]docker.RegistryHost // by registry/repository, see hostsFor
	states    map[string]*hostState            // by host:port that answered
}

// hostState is what a host was seen to do with range requests.
type hostState struct {
	noRanges atomic.Bool  // answers range requests with 200 and the whole blob
	noSuffix atomic.Bool  // rejects suffix ranges (bytes=-N)
	warmedAt atomic.Int64 // when connections were last warmed, in Unix nanoseconds
}

// NewResolver returns a Resolver configured by opts.
func NewResolver(opts ...Option) (*Resolver, error) {
	o := options{
		hostsDir:    DefaultHostsDir,
		credentials: keychainCredentials,
		timeout:     30 * time.Second,
		stall:       3 * time.Second,
		retries:     3,
		userAgent:   "lazypull",
		backoffBase: 100 * time.Millisecond,
		backoffMax:  5 * time.Second,
		warm:        8,
		spoolDir:    os.TempDir(),
		spoolMax:    2 << 30,
		observer:    nopObserver{},
	}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	r := &Resolver{opts: o, hosts: map[string][]docker.RegistryHost{}, states: map[string]*hostState{},
		spools: newSpools(o.spoolDir, o.spoolMax)}
	var hostDir func(string) (string, error)
	if o.hostsDir != "" {
		hostDir = config.HostDirFromRoot(o.hostsDir)
	}
	r.configure = config.ConfigureHosts(context.Background(), config.HostOptions{
		HostDir:       hostDir,
		Credentials:   o.credentials,
		DefaultScheme: "https",
		UpdateClient: func(c *http.Client) error {
			if t, ok := c.Transport.(*http.Transport); ok {
				keepConnections(t)
			}
			c.Transport = o.wrapTransport(c.Transport)
			return nil
		},
	})
	return r, nil
}

// Close stops the downloads of whole blobs into spool files and removes
// the files. Reads under way fail, and so do later ones.
func (r *Resolver) Close() error {
	r.spools.close()
	return nil
}

func (r *Resolver) closed() bool { return r.spools.ctx.Err() != nil }

// keepConnections makes t keep enough idle connections to a registry for
// the concurrent range requests of reads, read-ahead and background fetch.
// With the default of two, every further request dials a new connection
// and starts TCP's slow start again: on a link with a long round trip, a
// 1 MiB read then takes several round trips instead of one.
func keepConnections(t *http.Transport) {
	t.MaxIdleConns = max(t.MaxIdleConns, 256)
	t.MaxIdleConnsPerHost = max(t.MaxIdleConnsPerHost, 64)
	t.IdleConnTimeout = max(t.IdleConnTimeout, 90*time.Second)
}

// keychainCredentials reads docker's config.json and credential helpers.
func keychainCredentials(host string) (string, string, error) {
	if host == "registry-1.docker.io" {
		host = name.DefaultRegistry
	}
	reg, err := name.NewRegistry(host)
	if err != nil {
		return "", "", err
	}
	a, err := authn.DefaultKeychain.Resolve(reg)
	if err != nil {
		return "", "", err
	}
	cfg, err := a.Authorization()
	if err != nil {
		return "", "", err
	}
	if cfg.IdentityToken != "" {
		return "", cfg.IdentityToken, nil
	}
	return cfg.Username, cfg.Password, nil
}

// registryHosts returns the pull hosts of a registry, mirrors first, each
// with a client that authorizes its requests.
func (r *Resolver) registryHosts(registry string) ([]docker.RegistryHost, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if hs, ok := r.hosts[registry]; ok {
		return hs, nil
	}
	all, err := r.configure(registry)
	if err != nil {
		return nil, fmt.Errorf("hosts of %s: %w", registry, err)
	}
	var hs []docker.RegistryHost
	authMu := new(sync.Mutex) // see authTransport
	for _, h := range all {
		if !h.Capabilities.Has(docker.HostCapabilityPull) {
			continue
		}
		c := *h.Client
		c.Transport = &authTransport{inner: h.Client.Transport, auth: h.Authorizer, mu: authMu}
		h.Client = &c
		hs = append(hs, h)
	}
	if len(hs) == 0 {
		return nil, fmt.Errorf("no pull host configured for %s: %w", registry, errdefs.ErrNotFound)
	}
	r.hosts[registry] = hs
	return hs, nil
}

func (r *Resolver) state(host string) *hostState {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.states[host]
	if !ok {
		s = &hostState{}
		r.states[host] = s
	}
	return s
}

// Open resolves blob dgst of image ref (e.g. "registry.example/lib/img:tag"
// or "...@sha256:...") and returns it with its last min(tail, size) bytes.
// Size and tail come from one suffix range request (after authentication);
// no HEAD, no manifest. Hosts are tried in hosts.toml order, mirrors first.
// A registry that rejects suffix ranges costs two requests instead.
func (r *Resolver) Open(ctx context.Context, ref string, dgst digest.Digest, tail int64) (*Blob, []byte, error) {
	if tail < 0 {
		return nil, nil, fmt.Errorf("tail %d: %w", tail, errdefs.ErrInvalidArgument)
	}
	b, err := r.newBlob(ref, dgst, -1)
	if err != nil {
		return nil, nil, err
	}
	ctx = log.WithLogger(ctx, log.G(ctx).WithFields(log.Fields{"ref": ref, "digest": dgst}))
	data, err := b.open(ctx, tail)
	if err != nil {
		return nil, nil, err
	}
	b.warm(ctx)
	return b, data, nil
}

// OpenSized returns blob dgst of image ref, whose size the caller knows
// (from an earlier Open), without a request: the registry is first asked
// when the blob is read. A wrong size makes reads near the end fail.
func (r *Resolver) OpenSized(ctx context.Context, ref string, dgst digest.Digest, size int64) (*Blob, error) {
	if size < 0 {
		return nil, fmt.Errorf("blob %s: size %d: %w", dgst, size, errdefs.ErrInvalidArgument)
	}
	return r.newBlob(ref, dgst, size)
}

func (r *Resolver) newBlob(ref string, dgst digest.Digest, size int64) (*Blob, error) {
	if err := dgst.Validate(); err != nil {
		return nil, fmt.Errorf("blob digest %q: %w: %w", dgst, err, errdefs.ErrInvalidArgument)
	}
	spec, err := reference.Parse(ref)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w: %w", ref, err, errdefs.ErrInvalidArgument)
	}
	registry := spec.Hostname()
	repo := strings.TrimPrefix(spec.Locator, registry+"/")
	hosts, err := r.hostsFor(registry, repo)
	if err != nil {
		return nil, err
	}
	return &Blob{
		r:        r,
		ref:      ref,
		spec:     spec,
		registry: registry,
		repo:     repo,
		dgst:     dgst,
		size:     size,
		hosts:    hosts,
		direct:   make([]string, len(hosts)),
	}, nil
}

// warmAgain is how long after a warm-up a host is warmed again, well
// within the time idle connections are kept open.
const warmAgain = 30 * time.Second

// warm opens, in the background, connections to the host that answered
// b's open: WithWarmConnections concurrent reads of b's first byte, each
// of which finds no idle connection and opens one.
func (b *Blob) warm(ctx context.Context) {
	n := b.r.opts.warm
	if n == 0 {
		return
	}
	st := b.r.state(b.endpoint())
	if st.noRanges.Load() {
		return // a first byte would be the whole blob
	}
	now := time.Now().UnixNano()
	last := st.warmedAt.Load()
	if now-last < int64(warmAgain) || !st.warmedAt.CompareAndSwap(last, now) {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.r.opts.timeout)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			resp, err := b.fetch(ctx, "bytes=0-0")
			if err != nil {
				log.G(ctx).WithError(err).Debug("warming a connection failed")
				return
			}
			drain(resp.Body)
		})
	}
	go func() {
		wg.Wait()
		cancel()
	}()
}

// open learns the size and reads the tail.
func (b *Blob) open(ctx context.Context, tail int64) ([]byte, error) {
	n := max(tail, 1) // "bytes=-0" is unsatisfiable
	if !b.r.state(b.hosts[0].Host).noSuffix.Load() {
		var data []byte
		err := b.again(ctx, func() (err error) {
			data, err = b.readSuffix(ctx, n)
			return err
		})
		if err == nil {
			return data[int64(len(data))-min(tail, int64(len(data))):], nil
		}
		var e *Error
		if !errors.As(err, &e) || (e.Status != http.StatusBadRequest && e.Status != http.StatusRequestedRangeNotSatisfiable) {
			return nil, err
		}
		if b.r.state(e.Host).noSuffix.CompareAndSwap(false, true) {
			log.G(ctx).WithField("host", e.Host).Info("registry rejects suffix ranges; opening blobs takes two requests there")
		}
	}
	if err := b.again(ctx, func() error { return b.probeSize(ctx) }); err != nil {
		return nil, err
	}
	t := min(tail, b.size)
	buf := make([]byte, t)
	if t == 0 {
		return buf, nil
	}
	if _, err := b.ReadAt(ctx, buf, b.size-t); err != nil {
		return nil, err
	}
	return buf, nil
}
