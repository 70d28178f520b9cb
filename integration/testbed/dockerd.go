package testbed

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/lazypull/lazypull/contrib"
)

// DockerNamespace is the containerd namespace of Docker Engine's images
// and containers.
const DockerNamespace = "moby"

// Dockerd is a running Docker Engine (dockerd, hack/build-dockerd.sh) with
// the containerd image store, using a test bed's containerd, with its own
// data root, sockets and log.
type Dockerd struct {
	Dir string
	// Socket is the Engine API's unix socket.
	Socket     string
	ConfigPath string
	LogPath    string
	proc       *process
}

// StartDockerd starts dockerd for t against containerd c, configured with
// contrib/docker/daemon.json (c's socket in place of the default) plus the
// bed's own settings: its directories, no networking set-up (containers
// run with network "none" or "host") and cgroups under c's namespace's
// cgroup, which c's teardown removes. Start it after c, so that it stops
// before c. It fails t if dockerd is missing.
func StartDockerd(t T, c *Containerd) *Dockerd {
	t.Helper()
	bin, err := DockerdBinary()
	if err != nil {
		t.Fatal(err)
	}
	dir := Dir(t, "dockerd")
	d := &Dockerd{
		Dir:        dir,
		Socket:     filepath.Join(dir, "docker.sock"),
		ConfigPath: filepath.Join(dir, "daemon.json"),
		LogPath:    filepath.Join(dir, "dockerd.log"),
	}
	cfg, err := dockerConfig(c.Address)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]any{
		"data-root":        filepath.Join(dir, "data"),
		"exec-root":        filepath.Join(dir, "exec"),
		"pidfile":          filepath.Join(dir, "dockerd.pid"),
		"hosts":            []string{"unix://" + d.Socket},
		"bridge":           "none",
		"iptables":         false,
		"ip6tables":        false,
		"ip-forward":       false,
		"ip-masq":          false,
		"userland-proxy":   false,
		"cgroup-parent":    "/" + c.Namespace,
		"shutdown-timeout": 5,
		"log-level":        "debug",
	} {
		cfg[k] = v
	}
	// Debian 12's runc (1.1) does not know the time namespace that Docker
	// 29 gives containers.
	features, _ := cfg["features"].(map[string]any)
	if features == nil {
		features = map[string]any{}
	}
	features["time-namespaces"] = false
	cfg["features"] = features
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := writeFile(d.ConfigPath, string(b)); err != nil {
		t.Fatal(err)
	}
	// containerd's binaries (the shim) where dockerd looks for them too.
	env := append(os.Environ(), "PATH="+c.Flavour.BinDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	p, err := startProcess(t, "dockerd", d.LogPath, env, bin, "--config-file", d.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	d.proc = p
	t.Cleanup(func() {
		if err := p.stop(30 * time.Second); err != nil {
			t.Errorf("stop dockerd: %v", err)
		}
	})
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "unix", d.Socket)
	}}}
	err = waitFor(context.Background(), p, 60*time.Second, func(ctx context.Context) error {
		return getStatus(ctx, hc, "http://docker/_ping", http.StatusOK)
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// dockerConfig returns contrib/docker/daemon.json with containerd's socket
// at address. A default it does not name means the file and the bed have
// drifted apart.
func dockerConfig(address string) (map[string]any, error) {
	text, err := substitute("docker/daemon.json", contrib.DockerDaemon, contrib.DefaultContainerdSocket, address)
	if err != nil {
		return nil, err
	}
	var cfg map[string]any
	if err := json.Unmarshal([]byte(text), &cfg); err != nil {
		return nil, fmt.Errorf("contrib/docker/daemon.json: %w", err)
	}
	return cfg, nil
}
