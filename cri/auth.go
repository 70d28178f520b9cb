package cri

import (
	"encoding/base64"
	"fmt"
	"net/url"
	"strings"

	"github.com/distribution/reference"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// imageRepo returns the registry host and repository of an image
// reference as containerd's CRI plugin names them ("nginx" is docker.io,
// library/nginx).
func imageRepo(image string) (host, repo string, err error) {
	named, err := reference.ParseDockerRef(image)
	if err != nil {
		return "", "", fmt.Errorf("image reference %q: %w", image, err)
	}
	return reference.Domain(named), reference.Path(named), nil
}

// pullAuth returns the credentials of a pull from host the way containerd's
// CRI plugin reads them (ParseAuth in its images service), so that
// lazypulld uses exactly the credentials containerd pulled the image with:
// none if the auth config names another server; user name and password;
// else an identity token; else "auth", base64 of "user:password".
func pullAuth(a *runtime.AuthConfig, host string) (Auth, bool, error) {
	if a == nil {
		return Auth{}, false, nil
	}
	if a.ServerAddress != "" {
		u, err := url.Parse(a.ServerAddress)
		if err != nil {
			return Auth{}, false, fmt.Errorf("auth config: server address: %w", err)
		}
		if u.Host != apiHost(host) {
			return Auth{}, false, nil
		}
	}
	switch {
	case a.Username != "":
		return Auth{User: a.Username, Secret: a.Password}, true, nil
	case a.IdentityToken != "":
		return Auth{Secret: a.IdentityToken}, true, nil
	case a.Auth != "":
		dec, err := base64.StdEncoding.DecodeString(a.Auth)
		if err != nil {
			return Auth{}, false, fmt.Errorf("auth config: auth is not base64")
		}
		user, pass, ok := strings.Cut(string(dec), ":")
		if !ok {
			return Auth{}, false, fmt.Errorf("auth config: auth is not base64 of user:password")
		}
		return Auth{User: user, Secret: strings.Trim(pass, "\x00")}, true, nil
	}
	return Auth{}, false, nil
}

// apiHost is the host containerd sends registry requests for host to (and
// compares an auth config's server address with).
func apiHost(host string) string {
	if host == "docker.io" {
		return "registry-1.docker.io"
	}
	return host
}
