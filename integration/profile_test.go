package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/integration/testbed"
	"github.com/lazypull/lazypull/integration/testimage"
	"github.com/lazypull/lazypull/profile"
)

// TestProfileAcrossNodes: a container's start on one node is recorded as a
// start-up profile; `lazypull profile push` publishes it to the image's
// registry, the distribution registry, which has no referrers API (so the
// profile is listed under the referrers tag sha256-<hex>); a second node
// (its own lazypulld root and containerd, nothing cached) that pulls the
// image fetches the profile and fetches the chunks it lists as soon as the
// layers are mounted, before any container of the image runs: with
// background fetch and the entrypoint prefetch off, the one file the
// first container read is in the second node's chunk cache.
func TestProfileAcrossNodes(t *testing.T) {
	forEachFlavour(t, func(t *testing.T, f testbed.Flavour) {
		if f.ConfigVersion < 3 {
			t.Skip("the profiles do not depend on containerd's version; run with the 2.x flavour, whose ctr pulls lazily")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		// The first node runs with FUSE passthrough, as nodes do: files it
		// serves so are recorded when they are opened.
		lb := newLazyBed(t, f, lazyBedOptions{Tables: "[profile]\nfetch = false\n"})
		orig, img := pushDefaultImage(t, ctx, lb.Registry)
		ref := convertImage(t, ctx, orig, lb.Registry.Ref("lazypull/testimage:profile"))
		pullLazily(t, ctx, lb, ref)
		out, err := runHashfiles(ctx, lb, ref, "profile-record", "/data/hello")
		if err != nil {
			t.Fatal(err)
		}
		requireOutput(t, out, probeOutput(t, img.expected, "/data/hello"))
		waitGlob(t, ctx, filepath.Join(lb.Lazypulld.Root, "profiles", "*."+profile.Recorded+".json"))

		emptyConfig := filepath.Join(t.TempDir(), "config.toml")
		if err := os.WriteFile(emptyConfig, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		push := exec.CommandContext(ctx, lazypullBin, "profile", "push", "--config", emptyConfig,
			"--root", lb.Lazypulld.Root, "--hosts-dir", lb.HostsDir, ref)
		if b, err := push.CombinedOutput(); err != nil {
			t.Fatalf("lazypull profile push: %v\n%s", err, b)
		}
		store, err := profile.OpenStore(filepath.Join(lb.Lazypulld.Root, "profiles"), profile.DefaultLimits, 10)
		if err != nil {
			t.Fatal(err)
		}
		recs, err := store.List()
		if err != nil || len(recs) != 1 {
			t.Fatalf("%d profiles on the first node (%v), want 1", len(recs), err)
		}
		requireReferrersTag(t, lb.Registry.Host, "lazypull/testimage", recs[0].Manifest)

		ld := testbed.StartLazypulld(t, testbed.LazypulldOptions{Binary: lazypulldBin,
			Config: testbed.LazypulldRemoteConfig(lb.HostsDir) + "[fs]\nbackground_fetch = false\nloader_prefetch = false\n[profile]\nrecord = false\n"})
		c := testbed.StartContainerd(t, testbed.ContainerdOptions{Flavour: f, LazypullSocket: ld.Socket, LazypullRoot: ld.Root})
		if err := c.Pull(ctx, testbed.SnapshotterName, ref); err != nil {
			t.Fatal(err)
		}
		waitGlob(t, ctx, filepath.Join(ld.Root, "profiles", "*."+profile.Fetched+".json"))
		hello := digest.FromString("hello, lazypull\n").Encoded()
		waitGlob(t, ctx, filepath.Join(ld.Root, "cache", "sha256", hello[:2], hello))
		out, err = c.Run(ctx, testbed.SnapshotterName, ref, "profile-apply", "/"+testimage.EntrypointPath, "/data/hello")
		if err != nil {
			t.Fatal(err)
		}
		requireOutput(t, out, probeOutput(t, img.expected, "/data/hello"))
	})
}

// requireReferrersTag fails t unless the registry at host lists, under the
// referrers tag of manifest md in repo, an index.
func requireReferrersTag(t *testing.T, host, repo string, md digest.Digest) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://%s/v2/%s/manifests/%s-%s", host, repo, md.Algorithm(), md.Encoded()), nil)
	req.Header.Set("Accept", "application/vnd.oci.image.index.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("referrers tag of %s: HTTP %d, want 200", md, resp.StatusCode)
	}
}

// waitGlob waits until pattern matches a file.
func waitGlob(t *testing.T, ctx context.Context, pattern string) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		if m, _ := filepath.Glob(pattern); len(m) > 0 {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("no %s after 90s", pattern)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
