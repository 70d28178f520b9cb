package doctor

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

const (
	testUser   = "alice"
	testSecret = "s3cret-Pa55"
)

// privateRegistry serves a registry that wants basic auth as testUser and
// holds host/app:esgz (one layer with a TOC digest annotation) and
// host/app:gzip (one without).
func privateRegistry(t *testing.T) string {
	t.Helper()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if u, p, ok := req.BasicAuth(); !ok || u != testUser || p != testSecret {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		reg.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	auth := remote.WithAuth(&authn.Basic{Username: testUser, Password: testSecret})
	for tag, ann := range map[string]map[string]string{"esgz": {tocDigestAnnotation: "sha256:" + strings.Repeat("a", 64)}, "gzip": nil} {
		layer, err := random.Layer(1024, "application/vnd.oci.image.layer.v1.tar+gzip")
		if err != nil {
			t.Fatal(err)
		}
		img, err := mutate.Append(empty.Image, mutate.Addendum{Layer: layer, Annotations: ann})
		if err != nil {
			t.Fatal(err)
		}
		ref, err := name.ParseReference(host+"/app:"+tag, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(ref, img, auth); err != nil {
			t.Fatal(err)
		}
	}
	return host
}

func dockerAuth(user, secret string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + secret))
}

func TestCredentials(t *testing.T) {
	host := privateRegistry(t)
	helper := "#!/bin/sh\nread url\nif [ \"$url\" = %q ]; then echo '{\"Username\":\"%s\",\"Secret\":\"%s\"}'; exit 0; fi\necho 'credentials not found in native keychain'; exit 1\n"
	for _, tc := range []struct {
		name   string
		files  map[string]string // under the node's directory; HELPER is replaced
		env    []string          // DIR is replaced by the node's directory
		image  string
		checks []struct {
			check      string
			status     Status
			found, fix string
		}
	}{
		{"auths", map[string]string{"docker/config.json": fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, host, dockerAuth(testUser, testSecret))},
			[]string{"DOCKER_CONFIG=DIR/docker"}, "esgz", checks{
				{"credentials", OK, "from auths in DIR/docker/config.json, user \"alice\"", ""},
				{"registry", OK, "1 of 1 layers carry " + tocDigestAnnotation, ""}}},
		{"home", map[string]string{"home/.docker/config.json": fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, host, dockerAuth(testUser, testSecret))},
			[]string{"HOME=DIR/home"}, "gzip", checks{
				{"credentials", OK, "DIR/home/.docker/config.json", ""},
				{"registry", Warn, "0 of 1 layers", "lazypull convert"}}},
		{"wrong password", map[string]string{"docker/config.json": fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, host, dockerAuth(testUser, "wr0ngPass"))},
			[]string{"DOCKER_CONFIG=DIR/docker"}, "esgz", checks{
				{"credentials", OK, "user \"alice\"", ""},
				{"registry", Fail, "could not resolve", "credentials the registry accepts"}}},
		{"no home", nil, []string{"PATH=/usr/bin:/bin"}, "esgz", checks{
			{"credentials", Warn, "neither HOME nor DOCKER_CONFIG is set", "Environment=DOCKER_CONFIG="},
			{"registry", Fail, "could not resolve", "credentials the registry accepts"}}},
		{"helper", map[string]string{"docker/config.json": fmt.Sprintf(`{"credHelpers": {%q: "lptest"}}`, host), "bin/docker-credential-lptest": fmt.Sprintf(helper, host, testUser, testSecret)},
			[]string{"DOCKER_CONFIG=DIR/docker", "PATH=DIR/bin:/usr/bin:/bin"}, "esgz", checks{
				{"credentials", OK, "credential helper docker-credential-lptest (credHelpers in DIR/docker/config.json), user \"alice\"", ""},
				{"registry", OK, "serves", ""}}},
		{"helper has none", map[string]string{"docker/config.json": `{"credsStore": "lptest"}`, "bin/docker-credential-lptest": fmt.Sprintf(helper, "other", testUser, testSecret)},
			[]string{"DOCKER_CONFIG=DIR/docker", "PATH=DIR/bin:/usr/bin:/bin"}, "esgz", checks{
				{"credentials", OK, "no credentials for " + host + ": lazypulld pulls it anonymously (none in DIR/docker/config.json", "docker login"},
				{"registry", Fail, "could not resolve", "credentials the registry accepts"}}},
		{"helper not in PATH", map[string]string{"docker/config.json": fmt.Sprintf(`{"credHelpers": {%q: "lptest"}}`, host)},
			[]string{"DOCKER_CONFIG=DIR/docker", "PATH=/usr/bin:/bin"}, "esgz", checks{
				{"credentials", Fail, "docker-credential-lptest is not in lazypulld's PATH (/usr/bin:/bin)", "install the credential helper"}}},
		{"bad config", map[string]string{"docker/config.json": `{"auths": `},
			[]string{"DOCKER_CONFIG=DIR/docker"}, "esgz", checks{
				{"credentials", Fail, "DIR/docker/config.json", "fix the docker config"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t)
			n.write("config.toml", goodV3)
			n.write("certs.d/"+host+"/hosts.toml", fmt.Sprintf("server = \"http://%s\"\n", host))
			for f, content := range tc.files {
				p := n.write(f, content)
				if strings.HasPrefix(f, "bin/") {
					if err := chmodX(p); err != nil {
						t.Fatal(err)
					}
				}
			}
			n.opts.Env = nil
			for _, kv := range tc.env {
				n.opts.Env = append(n.opts.Env, strings.ReplaceAll(kv, "DIR", n.dir))
			}
			ref := host + "/app:" + tc.image
			n.opts.Images, n.opts.CheckRegistry = []string{ref}, true
			r := n.run("2.4.2")
			for _, c := range tc.checks {
				expect(t, r, c.check+" "+ref, c.status, strings.ReplaceAll(c.found, "DIR", n.dir), c.fix)
			}
			var js bytes.Buffer
			if err := r.WriteJSON(&js); err != nil {
				t.Fatal(err)
			}
			for _, secret := range []string{testSecret, dockerAuth(testUser, testSecret), "wr0ngPass"} {
				if strings.Contains(js.String()+text(r), secret) {
					t.Errorf("the report shows a secret (%q):\n%s", secret, text(r))
				}
			}
		})
	}
}

type checks = []struct {
	check      string
	status     Status
	found, fix string
}

func chmodX(p string) error {
	return os.Chmod(p, 0o755)
}
