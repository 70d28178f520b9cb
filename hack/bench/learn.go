package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/lazypull/lazypull/integration/testbed"
	"github.com/lazypull/lazypull/profile"
)

// modeLazyProfile is modeLazy with a learned start-up profile: the plain
// eStargz image, pulled on a fresh node (lazypulld root and containerd)
// that fetches the profile another node recorded and published as a
// referrer of the image (learnProfile), and prefetches its chunks as the
// layers are mounted.
const modeLazyProfile = "lazypull-profile"

// profileWait bounds the wait for lazypulld to keep the profile it
// records: its [profile] window from the mount of the layers, and a margin.
const profileWait = 2 * time.Minute

// learnProfile is the first node of the learned-profile mode: a lazypulld
// that records, with a containerd, pulls img's eStargz image lazily, runs
// its start workload once, waits for the profile, and publishes it with
// `lazypull profile push` (on the distribution registry: the referrers tag
// schema). It returns how many chunks the profile lists.
func (b *bench) learnProfile(ctx context.Context, img *image) (int, error) {
	s := newScope("learn "+img.Name, b.log)
	defer s.close()
	var chunks int
	err := s.do(func() error {
		ld := testbed.StartLazypulld(s, testbed.LazypulldOptions{
			Binary: filepath.Join(b.bin, "lazypulld"), LogLevel: "info",
			Config: fmt.Sprintf("[remote]\nhosts_dir = %q\n[fs]\n%s\n[profile]\nrecord = true\nfetch = false\n", b.hostsDir, b.fsConfig),
		})
		c := testbed.StartContainerd(s, testbed.ContainerdOptions{Flavour: b.flavour, LazypullSocket: ld.Socket, LazypullRoot: ld.Root})
		if _, err := c.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", testbed.SnapshotterName, img.EstargzRef); err != nil {
			return err
		}
		if _, _, err := runOnce(ctx, c, testbed.SnapshotterName, img.EstargzRef, "bench-learn", img.Spec.Start); err != nil {
			return err
		}
		dir := filepath.Join(ld.Root, "profiles")
		deadline := time.Now().Add(profileWait)
		for {
			if m, _ := filepath.Glob(filepath.Join(dir, "*."+profile.Recorded+".json")); len(m) > 0 {
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("lazypulld kept no profile within %v (its log: %s)", profileWait, ld.LogPath)
			}
			time.Sleep(100 * time.Millisecond)
		}
		store, err := profile.OpenStore(dir, profile.DefaultLimits, 1024)
		if err != nil {
			return err
		}
		recs, err := store.List()
		if err != nil || len(recs) == 0 {
			return fmt.Errorf("the recorded profile does not read back: %v", err)
		}
		chunks = len(recs[0].Profile.Reads)
		empty := filepath.Join(testbed.Dir(s, "learn"), "config.toml")
		if err := os.WriteFile(empty, nil, 0o600); err != nil {
			return err
		}
		cmd := exec.CommandContext(ctx, filepath.Join(b.bin, "lazypull"), "profile", "push", "--config", empty,
			"--root", ld.Root, "--hosts-dir", b.hostsDir, img.EstargzRef)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("lazypull profile push: %v: %s", err, strings.TrimSpace(string(out)))
		}
		return nil
	})
	return chunks, err
}

// profileNote says how profiles are recorded.
const profileNote = "the chunks read within [profile] window of the first read, in the order read"

// profileConfig is lazypulld's [profile] table for a run in mode.
func profileConfig(mode string) string {
	if mode == modeLazyProfile {
		return "[profile]\nrecord = false\nfetch = true\n"
	}
	// The image has a profile in the registry once learned: other modes
	// must not fetch it.
	return "[profile]\nrecord = false\nfetch = false\n"
}
