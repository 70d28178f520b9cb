package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/lazypull/lazypull/integration/testbed"
	"github.com/lazypull/lazypull/integration/testimage"
)

// criPauseImage is the repository and tag, in a bed's registry, of the
// pause image of the CRI tests' pods.
const criPauseImage = "lazypull/pause:1"

// pushPauseImage pushes the pause image (integration/cmd/pause, built by
// TestMain) to lb's registry as criPauseImage, with the registry's
// credentials if it requires some.
func pushPauseImage(t *testing.T, ctx context.Context, lb *lazyBed, auth *testbed.RegistryAuth) string {
	t.Helper()
	bin, err := os.ReadFile(pauseBin)
	if err != nil {
		t.Fatal(err)
	}
	img, err := testimage.Image([]testimage.Layer{{Entries: []testimage.Entry{testimage.File("pause", 0o755, bin)}}},
		[]string{"/pause"})
	if err != nil {
		t.Fatal(err)
	}
	ref := lb.Registry.Ref(criPauseImage)
	pushWithAuth(t, ctx, ref, img, auth)
	return ref
}

// pushWithAuth pushes img to ref over plain HTTP, as auth's user when
// auth is not nil.
func pushWithAuth(t *testing.T, ctx context.Context, ref string, img v1.Image, auth *testbed.RegistryAuth) {
	t.Helper()
	if auth == nil {
		if _, err := testimage.Push(ctx, ref, img); err != nil {
			t.Fatal(err)
		}
		return
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	basic := &authn.Basic{Username: auth.User, Password: auth.Password}
	if err := remote.Write(r, img, remote.WithContext(ctx), remote.WithAuth(basic)); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

// criPod is a pod sandbox run through the CRI with crictl: host network,
// its cgroups under the bed's namespace's cgroup (which the bed removes),
// its logs in a directory of the test.
type criPod struct {
	crictl *testbed.Crictl
	id     string
	dir    string // pod and container configurations, logs
}

// runPod runs a pod sandbox named name with crictl and removes it, with its
// containers, at cleanup (before the bed's containerd stops).
func runPod(t *testing.T, ctx context.Context, lb *lazyBed, crictl *testbed.Crictl, name string) *criPod {
	t.Helper()
	p := &criPod{crictl: crictl, dir: testbed.Dir(t, "pod")}
	uid := fmt.Sprintf("%s-%d", name, time.Now().UnixNano())
	cfg := map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": "default", "uid": uid},
		"log_directory": p.dir,
		"linux": map[string]any{
			"cgroup_parent": "/" + lb.Containerd.Namespace,
			"security_context": map[string]any{
				"namespace_options": map[string]any{"network": 2}, // NODE: the host's network
			},
		},
	}
	path := p.writeJSON(t, "pod.json", cfg)
	out, err := crictl.Run(ctx, "runp", path)
	if err != nil {
		t.Fatal(err)
	}
	p.id = strings.TrimSpace(out)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := crictl.Run(ctx, "rmp", "--force", p.id); err != nil {
			t.Errorf("remove pod %s: %v", name, err)
		}
	})
	return p
}

func (p *criPod) writeJSON(t *testing.T, file string, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(p.dir, file)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// runToCompletion creates and starts a container named name from image in
// the pod with command as its process, waits until it has exited and
// returns its output as `crictl logs` shows it. A non-zero exit status is
// an error.
func (p *criPod) runToCompletion(t *testing.T, ctx context.Context, name, image string, command ...string) string {
	t.Helper()
	ctr := p.writeJSON(t, name+".json", map[string]any{
		"metadata": map[string]any{"name": name},
		"image":    map[string]any{"image": image},
		"command":  command,
		"log_path": name + ".log",
		"linux":    map[string]any{},
	})
	pod := filepath.Join(p.dir, "pod.json")
	out, err := p.crictl.Run(ctx, "create", p.id, ctr, pod)
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(out)
	if _, err := p.crictl.Run(ctx, "start", id); err != nil {
		t.Fatal(err)
	}
	var st struct {
		Status struct {
			State    string `json:"state"`
			ExitCode int    `json:"exitCode"`
			Reason   string `json:"reason"`
		} `json:"status"`
	}
	for st.Status.State != "CONTAINER_EXITED" {
		if ctx.Err() != nil {
			t.Fatalf("container %s: state %s when the test's time was up", name, st.Status.State)
		}
		out, err := p.crictl.Run(ctx, "inspect", "--output", "json", id)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("crictl inspect %s: %v\n%s", id, err, out)
		}
		if st.Status.State != "CONTAINER_EXITED" {
			time.Sleep(100 * time.Millisecond) // polling a state, not ordering goroutines
		}
	}
	logs, err := p.crictl.Run(ctx, "logs", id)
	if err != nil {
		t.Fatal(err)
	}
	if st.Status.ExitCode != 0 {
		t.Fatalf("container %s exited with status %d (%s); logs:\n%s", name, st.Status.ExitCode, st.Status.Reason, logs)
	}
	return logs
}
