package doctor

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/docker/cli/cli/config/configfile"
	"github.com/docker/docker-credential-helpers/client"
	"github.com/docker/docker-credential-helpers/credentials"
)

// dockerHubKey is the docker config's key for Docker Hub.
const dockerHubKey = "https://index.docker.io/v1/"

// creds is what lazypulld would authenticate to a registry host with.
type creds struct {
	// Source says where they come from ("" when there are none), File the
	// file that was read ("" when none was found).
	Source, File string
	// User is the user name ("" for a token); Secret is never shown.
	User, Secret string
}

// authKey is the docker config key of a registry host, as lazypulld (and
// go-containerregistry's keychain) looks it up.
func authKey(host string) string {
	switch host {
	case "docker.io", "index.docker.io", "registry-1.docker.io":
		return dockerHubKey
	}
	return host
}

// dockerConfigPath finds the file lazypulld's credential lookup reads
// (go-containerregistry's default keychain, with env as its environment):
// $HOME/.docker/config.json or $DOCKER_CONFIG/config.json, else
// $REGISTRY_AUTH_FILE, else podman's containers/auth.json. "" for none.
func dockerConfigPath(env map[string]string) string {
	home, dc := env["HOME"], env["DOCKER_CONFIG"]
	found := home != "" && isFile(filepath.Join(home, ".docker", "config.json"))
	if !found && dc != "" {
		found = isFile(filepath.Join(dc, "config.json"))
	}
	if found {
		if dc != "" {
			return filepath.Join(dc, "config.json")
		}
		return filepath.Join(home, ".docker", "config.json")
	}
	if p := filepath.Clean(env["REGISTRY_AUTH_FILE"]); env["REGISTRY_AUTH_FILE"] != "" && isFile(p) {
		return p
	}
	if rt := env["XDG_RUNTIME_DIR"]; rt != "" && isFile(filepath.Join(rt, "containers", "auth.json")) {
		return filepath.Join(rt, "containers", "auth.json")
	}
	cfgDir := env["XDG_CONFIG_HOME"]
	if cfgDir == "" && home != "" {
		cfgDir = filepath.Join(home, ".config")
	}
	if cfgDir != "" && isFile(filepath.Join(cfgDir, "containers", "auth.json")) {
		return filepath.Join(cfgDir, "containers", "auth.json")
	}
	return ""
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// lookupCredentials finds the credentials for host the way lazypulld
// would with environment env, running a credential helper if the config
// names one. An error means lazypulld's lookup fails too (and its pulls
// of this registry with it).
func lookupCredentials(ctx context.Context, env map[string]string, host string) (creds, error) {
	key := authKey(host)
	if v := env["DOCKER_AUTH_CONFIG"]; v != "" {
		var ec struct {
			Auths map[string]struct {
				Auth string `json:"auth"`
			} `json:"auths"`
		}
		if err := json.Unmarshal([]byte(v), &ec); err != nil {
			return creds{}, fmt.Errorf("DOCKER_AUTH_CONFIG: %w", err)
		}
		if a, ok := ec.Auths[key]; ok {
			user, secret, err := decodeAuth(a.Auth)
			return creds{Source: "the DOCKER_AUTH_CONFIG environment variable", User: user, Secret: secret}, err
		}
	}
	path := dockerConfigPath(env)
	if path == "" {
		return creds{}, nil
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return creds{File: path}, nil // $DOCKER_CONFIG without a file: an empty config
	}
	if err != nil {
		return creds{File: path}, err
	}
	defer f.Close()
	cf := configfile.New(path)
	if err := cf.LoadFromReader(f); err != nil {
		return creds{File: path}, fmt.Errorf("%s: %w", path, err)
	}
	helper := cf.CredentialHelpers[key]
	source := "credHelpers"
	if helper == "" {
		helper, source = cf.CredentialsStore, "credsStore"
	}
	if helper != "" {
		c := creds{File: path, Source: fmt.Sprintf("credential helper docker-credential-%s (%s in %s)", helper, source, path)}
		got, err := runHelper(ctx, env, "docker-credential-"+helper, key)
		if credentials.IsErrCredentialsNotFound(err) {
			return creds{File: path}, nil
		}
		if err != nil {
			return c, err
		}
		c.User, c.Secret = got.Username, got.Secret
		return c, nil
	}
	ac, ok := cf.AuthConfigs[key]
	if !ok {
		return creds{File: path}, nil
	}
	c := creds{File: path, Source: "auths in " + path, User: ac.Username, Secret: ac.Password}
	switch {
	case ac.Auth != "":
		c.User, c.Secret, err = decodeAuth(ac.Auth)
	case ac.IdentityToken != "":
		c.User, c.Secret = "", ac.IdentityToken
	case ac.RegistryToken != "":
		c.User, c.Secret = "", ac.RegistryToken
	}
	return c, err
}

func decodeAuth(s string) (string, string, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return "", "", errors.New("auth is not base64")
	}
	user, secret, ok := strings.Cut(string(b), ":")
	if !ok {
		return "", "", errors.New("auth is not base64 of user:password")
	}
	return user, strings.Trim(secret, "\x00"), nil
}

// runHelper asks a docker credential helper for key's credentials, found
// and run with env (lazypulld's PATH and HOME, not this process's).
func runHelper(ctx context.Context, env map[string]string, name, key string) (*credentials.Credentials, error) {
	bin, err := lookPath(name, env["PATH"])
	if err != nil {
		return nil, err
	}
	var kv []string
	for k, v := range env {
		kv = append(kv, k+"="+v)
	}
	return client.Get(func(args ...string) client.Program {
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = kv
		return &helperProgram{cmd: cmd}
	}, key)
}

type helperProgram struct{ cmd *exec.Cmd }

func (p *helperProgram) Output() ([]byte, error) { return p.cmd.Output() }
func (p *helperProgram) Input(in io.Reader)      { p.cmd.Stdin = in }

// lookPath finds an executable in a PATH value.
func lookPath(name, path string) (string, error) {
	for _, dir := range filepath.SplitList(path) {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s is not in lazypulld's PATH (%s)", name, orNone(path))
}
