package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/lazypull/lazypull/integration/testbed"
)

// Modes: how an image is pulled.
const (
	modeOverlay = "overlayfs" // the gzip image, pulled and unpacked by containerd
	modeLazy    = "lazypull"  // the eStargz image, mounted lazily by lazypulld
	// modeLazyPrio is modeLazy with the image whose layers start with the
	// files the start workload reads, which lazypulld prefetches.
	modeLazyPrio = "lazypull-prio"
)

// modes lists the modes in the order they are reported.
var modes = []string{modeOverlay, modeLazy, modeLazyPrio, modeLazyProfile}

// result is one cold run: an image pulled into a fresh containerd and
// lazypulld (no content, snapshots, images or chunk cache) and run twice.
// Times are in seconds.
type result struct {
	Image    string `json:"image"`
	Workload string `json:"workload"`
	Mode     string `json:"mode"`
	Run      int    `json:"run"`

	// Pull is `ctr image pull`; Output the first `ctr run --rm` from its
	// start until the container's first output, Exit until it returned;
	// Total is from the start of the pull to the first output.
	Pull   float64 `json:"pull_s"`
	Output float64 `json:"output_s"`
	Exit   float64 `json:"exit_s"`
	Total  float64 `json:"total_s"`
	// Warm is a second `ctr run --rm` right after the first: from its
	// start until its first output.
	Warm float64 `json:"warm_s"`
	// Local is from the start of the pull until the whole image is on the
	// node: the pull for overlayfs; for lazypull when the chunk cache holds
	// every chunk of the image. Nil when it was not reached in time.
	Local *float64 `json:"local_s"`
	// Verified is from the start of the pull until every layer was checked
	// against its DiffID: the pull for overlayfs; for lazypull when every
	// layer's snapshot carries lazypulld's verification label. Nil when it
	// was not reached in time.
	Verified *float64 `json:"verified_s"`

	// StartBytes and StartRequests are what the registry served until the
	// first run ended (bytes as delivered by the link, headers included;
	// requests from the registry's access log); Bytes and Requests until the
	// image was fully local.
	StartBytes    int64 `json:"start_bytes"`
	StartRequests int   `json:"start_requests"`
	Bytes         int64 `json:"bytes"`
	Requests      int   `json:"requests"`

	// LazyLayers counts the layers lazypulld mounted lazily.
	LazyLayers int    `json:"lazy_layers"`
	Note       string `json:"note,omitempty"`
	Error      string `json:"error,omitempty"`
}

// coldRun measures one cold run in a scope of its own, torn down before it
// returns.
func (b *bench) coldRun(ctx context.Context, img *image, w workload, mode string, i int) result {
	res := result{Image: img.Name, Workload: w.Name, Mode: mode, Run: i}
	s := newScope(fmt.Sprintf("%s/%s/%s#%d", img.Name, w.Name, mode, i), b.log)
	err := s.do(func() error { return b.measure(ctx, s, img, w, &res) })
	if err != nil {
		res.Error = err.Error()
	}
	if s.close() && err == nil {
		b.teardownFailed = true
		res.Note = strings.TrimPrefix(res.Note+"; teardown failed (see the log)", "; ")
	}
	return res
}

func (b *bench) measure(ctx context.Context, s *scope, img *image, w workload, res *result) error {
	if b.klink != nil {
		if err := b.klink.Err(); err != nil {
			return fmt.Errorf("the link is down: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, b.runTimeout)
	defer cancel()
	level := "info"
	if b.logs {
		level = "debug"
	}
	ld := testbed.StartLazypulld(s, testbed.LazypulldOptions{
		Binary: filepath.Join(b.bin, "lazypulld"), LogLevel: level,
		Config: fmt.Sprintf("[remote]\nhosts_dir = %q\n[fs]\n%s\n%s", b.hostsDir, b.fsConfig, profileConfig(res.Mode)),
	})
	c := testbed.StartContainerd(s, testbed.ContainerdOptions{Flavour: b.flavour, LazypullSocket: ld.Socket, LazypullRoot: ld.Root})
	ref, sn := img.GzipRef, "overlayfs"
	switch res.Mode {
	case modeLazy:
		ref, sn = img.EstargzRef, testbed.SnapshotterName
	case modeLazyPrio:
		ref, sn = img.PrioRef, testbed.SnapshotterName
	case modeLazyProfile:
		ref, sn = img.EstargzRef, testbed.SnapshotterName
	}
	lazy := sn == testbed.SnapshotterName
	if lazy && b.logs {
		defer b.keepLog(ld.LogPath, res)
	}
	bytes0, reqs0, err := b.served()
	if err != nil {
		return err
	}
	t0 := time.Now()
	if _, err := c.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", sn, ref); err != nil {
		return err
	}
	pulled := time.Now()
	res.Pull = pulled.Sub(t0).Seconds()
	first, exit, err := runOnce(ctx, c, sn, ref, "bench-cold", w)
	if err != nil {
		return err
	}
	res.Output, res.Exit = first.Sub(pulled).Seconds(), exit.Sub(pulled).Seconds()
	res.Total = first.Sub(t0).Seconds()
	if res.StartBytes, res.StartRequests, err = b.servedSince(bytes0, reqs0); err != nil {
		return err
	}

	if lazy {
		mounts, err := testbed.LazyMounts(ld.Root)
		if err != nil {
			return err
		}
		if res.LazyLayers = len(mounts); res.LazyLayers != img.Layers {
			return fmt.Errorf("only %d of the image's %d layers were mounted lazily (lazypulld log: %s)", res.LazyLayers, img.Layers, ld.LogPath)
		}
	}
	warmStart := time.Now()
	first, _, err = runOnce(ctx, c, sn, ref, "bench-warm", w)
	if err != nil {
		return fmt.Errorf("warm run: %w", err)
	}
	res.Warm = first.Sub(warmStart).Seconds()

	local := pulled
	if lazy {
		wctx, cancel := context.WithTimeout(ctx, b.localTimeout(img))
		local, err = waitLocal(wctx, filepath.Join(ld.Root, "cache"), img.Local, 100*time.Millisecond)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			res.Note = fmt.Sprintf("not fully local after %v: %v", b.localTimeout(img), err)
		}
	}
	if !local.IsZero() {
		v := local.Sub(t0).Seconds()
		res.Local = &v
	}
	verified := pulled
	if lazy {
		wctx, cancel := context.WithTimeout(ctx, b.localTimeout(img))
		verified, err = waitVerified(wctx, c.Client(s), c.Namespace, img.Layers, 100*time.Millisecond)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			res.Note = strings.TrimPrefix(res.Note+"; not verified: "+err.Error(), "; ")
		}
	}
	if !verified.IsZero() {
		v := verified.Sub(t0).Seconds()
		res.Verified = &v
	}
	res.Bytes, res.Requests, err = b.servedSince(bytes0, reqs0)
	return err
}

// localTimeout bounds the wait for an image to become fully local: long
// enough to fetch it three times over at the link's rate, plus a minute.
func (b *bench) localTimeout(img *image) time.Duration {
	return time.Minute + time.Duration(3*float64(img.EstargzBytes*8)/float64(b.rate)*float64(time.Second))
}

// served returns what the registry has served so far: bytes through the
// link and requests in its access log.
func (b *bench) served() (int64, int, error) {
	reqs, err := b.registry.Requests()
	return b.net.Delivered(), len(reqs), err
}

func (b *bench) servedSince(bytes0 int64, reqs0 int) (int64, int, error) {
	n, r, err := b.served()
	return n - bytes0, r - reqs0, err
}

// runOnce runs w in a new container of ref and returns when it first wrote
// to stdout and when ctr returned. Its last line must match w.Want.
func runOnce(ctx context.Context, c *testbed.Containerd, sn, ref, id string, w workload) (first, exit time.Time, err error) {
	cmd := c.RunCommand(ctx, sn, ref, id, w.Args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out := &firstWrite{}
	cmd.Stdout = out
	if err := cmd.Run(); err != nil {
		return first, exit, fmt.Errorf("ctr run %s: %w\nstderr:\n%s", strings.Join(w.Args, " "), err, stderr.String())
	}
	exit = time.Now()
	if !lastLineMatches(out.buf.String(), w.Want) {
		return first, exit, fmt.Errorf("%s printed %q, want a last line matching %q", strings.Join(w.Args, " "), out.buf.String(), w.Want)
	}
	return out.at, exit, nil
}

// firstWrite keeps what is written to it and when it was first written to.
type firstWrite struct {
	mu  sync.Mutex
	at  time.Time
	buf bytes.Buffer
}

var _ io.Writer = (*firstWrite)(nil)

func (f *firstWrite) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.at.IsZero() && len(p) > 0 {
		f.at = time.Now()
	}
	return f.buf.Write(p)
}

// keepLog copies lazypulld's log of run res into the logs directory.
func (b *bench) keepLog(path string, res *result) {
	dir := filepath.Join(b.out, "logs")
	name := fmt.Sprintf("%s-%s-%s-%d.log", res.Image, res.Workload, res.Mode, res.Run)
	data, err := os.ReadFile(path)
	if err == nil {
		if err = os.MkdirAll(dir, 0o755); err == nil {
			err = os.WriteFile(filepath.Join(dir, name), data, 0o644)
		}
	}
	if err != nil {
		fmt.Fprintf(b.log, "keeping the lazypulld log: %v\n", err)
	}
}
