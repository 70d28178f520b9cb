package testbed

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// RegistryBinary is the distribution registry (Debian package docker-registry).
var RegistryBinary = "/usr/bin/docker-registry"

// Registry is a distribution registry serving plain HTTP on 127.0.0.1 with
// filesystem storage in its own directory.
type Registry struct {
	// Host is "127.0.0.1:<port>", the registry part of image references.
	Host    string
	Dir     string
	LogPath string
	proc    *process
}

// RegistryOptions configures StartRegistryWith.
type RegistryOptions struct {
	// NetNS, when set, is the path of a network namespace (such as
	// /run/netns/NAME) to run the registry in, through nsenter. Host is
	// then 127.0.0.1:<port> inside that namespace, which Dial must reach.
	NetNS string
	// Dial connects to the registry to check that it is ready; nil means
	// net.Dialer's. Required with NetNS.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Listen, when set, is the IP address the registry listens on instead
	// of 127.0.0.1 (an address of NetNS when that is set); Host is then
	// <Listen>:<port>.
	Listen string
	// Auth, when set, makes the registry require HTTP basic
	// authentication with these credentials (an htpasswd file), as a
	// private registry does.
	Auth *RegistryAuth
}

// RegistryAuth is a user of a registry that requires authentication.
type RegistryAuth struct {
	User, Password string
}

// htpasswd returns the line of an htpasswd file for a, with a bcrypt hash
// (the only kind the distribution registry accepts).
func (a *RegistryAuth) htpasswd() (string, error) {
	h, err := bcrypt.GenerateFromPassword([]byte(a.Password), bcrypt.MinCost)
	if err != nil {
		return "", err
	}
	return a.User + ":" + string(h) + "\n", nil
}

// StartRegistry starts a registry for t and stops it at cleanup.
func StartRegistry(t T) *Registry {
	t.Helper()
	return StartRegistryWith(t, RegistryOptions{})
}

// StartRegistryWith is StartRegistry with options.
func StartRegistryWith(t T, opts RegistryOptions) *Registry {
	t.Helper()
	if err := checkBinary(RegistryBinary); err != nil {
		t.Fatal(err)
	}
	if opts.NetNS != "" && opts.Dial == nil {
		t.Fatal("testbed: RegistryOptions.NetNS needs Dial")
	}
	dir := Dir(t, "registry")
	r := &Registry{Dir: dir, LogPath: filepath.Join(dir, "registry.log")}
	var err error
	for attempt := 0; attempt < 3; attempt++ { // the free port may be taken meanwhile
		if err = r.start(t, opts); err == nil {
			return r
		}
	}
	t.Fatalf("start registry: %v", err)
	return nil
}

func (r *Registry) start(t T, opts RegistryOptions) error {
	port, err := FreePort()
	if err != nil {
		return err
	}
	ip := "127.0.0.1"
	if opts.Listen != "" {
		ip = opts.Listen
	}
	r.Host = net.JoinHostPort(ip, strconv.Itoa(port))
	storage := filepath.Join(r.Dir, "storage")
	if err := os.MkdirAll(storage, 0o755); err != nil {
		return err
	}
	auth := ""
	if opts.Auth != nil {
		line, err := opts.Auth.htpasswd()
		if err != nil {
			return err
		}
		htpasswd := filepath.Join(r.Dir, "htpasswd")
		if err := writeFile(htpasswd, line); err != nil {
			return err
		}
		auth = fmt.Sprintf("auth:\n  htpasswd:\n    realm: lazypull-test\n    path: %s\n", htpasswd)
	}
	cfg := filepath.Join(r.Dir, "config.yml")
	if err := writeFile(cfg, auth+fmt.Sprintf(`version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
`, storage, r.Host)); err != nil {
		return err
	}
	bin, args := RegistryBinary, []string{"serve", cfg}
	if opts.NetNS != "" {
		bin, args = "nsenter", append([]string{"--net=" + opts.NetNS, "--", RegistryBinary}, args...)
	}
	p, err := startProcess(t, "registry", r.LogPath, os.Environ(), bin, args...)
	if err != nil {
		return err
	}
	hc := http.DefaultClient
	if opts.Dial != nil {
		tr := &http.Transport{DialContext: opts.Dial, DisableKeepAlives: true}
		hc = &http.Client{Transport: tr}
	}
	ready := []int{http.StatusOK}
	if opts.Auth != nil {
		ready = append(ready, http.StatusUnauthorized)
	}
	err = waitFor(context.Background(), p, 20*time.Second, func(ctx context.Context) error {
		return getStatus(ctx, hc, "http://"+r.Host+"/v2/", ready...)
	})
	if err != nil {
		if !p.exited() {
			_ = p.stop(5 * time.Second)
		}
		return err
	}
	r.proc = p
	t.Cleanup(func() {
		if err := p.stop(10 * time.Second); err != nil {
			t.Errorf("stop registry: %v", err)
		}
	})
	return nil
}

// getStatus GETs url with hc and fails unless the answer has one of the
// statuses ok.
func getStatus(ctx context.Context, hc *http.Client, url string, ok ...int) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if !slices.Contains(ok, resp.StatusCode) {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// Ref returns the image reference "<host>/<repoTag>".
func (r *Registry) Ref(repoTag string) string {
	return r.Host + "/" + repoTag
}

// Request is one request the registry answered, from its access log.
type Request struct {
	Method string
	Path   string // request URI, query included
	Status int
	Bytes  int64 // response body size
	Agent  string
}

// Requests returns the requests the registry has answered so far, oldest
// first, parsed from the access log lines (common log format) in its log.
// The registry logs a request right after answering it, so a client may
// see its response a moment before the request shows up here.
func (r *Registry) Requests() ([]Request, error) {
	b, err := os.ReadFile(r.LogPath)
	if err != nil {
		return nil, err
	}
	var reqs []Request
	for _, line := range strings.Split(string(b), "\n") {
		if req, ok := parseAccessLine(line); ok {
			reqs = append(reqs, req)
		}
	}
	return reqs, nil
}

// parseAccessLine parses
// `127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 200 2 "referer" "agent"`.
func parseAccessLine(line string) (Request, bool) {
	parts := strings.Split(line, `"`)
	if len(parts) < 7 || !strings.Contains(parts[0], "] ") {
		return Request{}, false
	}
	reqLine := strings.Fields(parts[1])
	status := strings.Fields(parts[2])
	if len(reqLine) != 3 || len(status) != 2 {
		return Request{}, false
	}
	code, err := strconv.Atoi(status[0])
	if err != nil {
		return Request{}, false
	}
	size, _ := strconv.ParseInt(status[1], 10, 64)
	return Request{Method: reqLine[0], Path: reqLine[1], Status: code, Bytes: size, Agent: parts[5]}, true
}
