package testbed

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Crictl runs crictl (hack/build-crictl.sh) against the CRI plugin of a
// test bed's containerd, the way kubelet talks to it.
type Crictl struct {
	bin    string
	config string
}

// NewCrictl returns a Crictl for the CRI plugin of c, whose image calls go
// to imageEndpoint (a unix socket path, such as lazypulld's CRI image
// service proxy; "" for c's own socket). It fails t if crictl is missing.
func NewCrictl(t T, c *Containerd, imageEndpoint string) *Crictl {
	t.Helper()
	bin, err := CrictlBinary()
	if err != nil {
		t.Fatal(err)
	}
	if imageEndpoint == "" {
		imageEndpoint = c.Address
	}
	// A configuration file of its own, so that no /etc/crictl.yaml
	// of the machine leaks in.
	cfg := filepath.Join(Dir(t, "crictl"), "crictl.yaml")
	if err := writeFile(cfg, fmt.Sprintf("runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 120\n",
		c.Address, imageEndpoint)); err != nil {
		t.Fatal(err)
	}
	return &Crictl{bin: bin, config: cfg}
}

// Run runs crictl with args and returns its stdout. The error carries the
// command line, exit status and stderr.
func (c *Crictl) Run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, c.bin, append([]string{"--config", c.config}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("crictl %s: %w\nstdout:\n%s\nstderr:\n%s",
			strings.Join(args, " "), err, tailString(stdout.String(), 8<<10), tailString(stderr.String(), 8<<10))
	}
	return stdout.String(), nil
}
