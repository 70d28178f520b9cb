package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/lazypull/lazypull/integration/testbed"
)

// The load test's shape and bounds.
const (
	loadImageCount = 5
	loadContainers = 20
	// loadCacheMax is the chunk cache's bound ([cache] max_size): less than
	// the images' chunks (about 28MiB), so that it has to evict.
	loadCacheMax = 16 << 20
	// loadCacheSlack is what the chunk cache may hold beyond its bound for
	// a moment: entries being stored while the ones they replace are
	// evicted, a few chunks of at most 4MiB or whole files of 5MiB.
	loadCacheSlack = 16 << 20
	// loadReadBound bounds one round of reads of every file by 20
	// containers (the first one includes their start) on a busy machine.
	loadReadBound = 5 * time.Minute
	// Once the images are removed, the data plane may keep, beyond what it
	// held before: idle connections, to the registry (the registry
	// client's pool keeps up to 64 per host for 90s) and from the daemon
	// (whose client keeps up to 16 for a minute), with their goroutines
	// (two per client connection, one per served one); the pipes of
	// go-fuse's pool of splice pipes, which keeps the pairs that the most
	// reads served at once used (see splicePipes); a few descriptors and
	// goroutines made once, at first use (go-fuse's /dev/null to empty
	// pipes); a heap that holds what the in-memory chunk cache keeps ([fs]
	// memory_cache_size, set to loadMemCache: it keeps chunks of removed
	// layers until newer ones replace them) and a little more.
	idleSockets    = 64 + 16
	fdSlack        = 4
	goroutineSlack = 12
	loadMemCache   = 4 << 20
	heapSlack      = loadMemCache + 8<<20
	// The daemon may keep idle connections to its data plane (its client
	// keeps up to 16 for a minute) and containerd's to it.
	daemonIdleSockets = 16 + 4
	daemonThreadSlack = 8
)

// TestLoad starts 20 containers of 5 lazily pulled images at once (each
// image has a layer of its own and a top layer over a base layer they all
// share), and has each read every file of its image twice, the second
// time with the page cache dropped, with a chunk cache smaller than the
// images. Every byte read must be right. The daemon's and the data
// plane's memory, goroutines and descriptors are measured before, during
// and after; once the containers and images are removed they must come
// back to what they were (within the bounds above): every layer
// unmounted, no descriptor or goroutine left but those of idle
// connections, the heap back near where it was. The chunk cache stays
// within its bound throughout.
func TestLoad(t *testing.T) {
	forEachFlavour(t, func(t *testing.T, f testbed.Flavour) {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		lb := newLazyBed(t, f, lazyBedOptions{Tables: fmt.Sprintf(
			"[fs]\nmemory_cache_size = %d\n[cache]\nmax_size = %d\n", loadMemCache, loadCacheMax)})
		imgs := pushLoadImages(t, ctx, lb, loadImageCount)
		m := newMeter(t, ctx, lb)
		before, err := m.measure(ctx, true)
		if err != nil {
			t.Fatal(err)
		}
		stopSampling := m.sample(ctx, 250*time.Millisecond)
		sampling := true
		defer func() {
			if sampling {
				stopSampling()
			}
		}()

		pullAll(t, ctx, lb, imgs)
		readers := make([]*reader, loadContainers)
		for i := range readers {
			readers[i] = startReader(t, lb, imgs[i%len(imgs)].ref, fmt.Sprintf("load-%d", i))
		}
		readAll(t, readers, imgs, "first reads, as the containers start")
		during, err := m.measure(ctx, true) // the live heap, with every layer mounted
		if err != nil {
			t.Fatal(err)
		}
		dropCaches(t)
		readAll(t, readers, imgs, "reads with the page cache dropped")
		peak := stopSampling()
		sampling = false
		if peak.err != nil {
			t.Fatalf("measuring during the reads: %v", peak.err)
		}

		stopAll(t, readers)
		removeAll(t, ctx, lb, imgs)
		after := settle(t, ctx, m, before, during.planeFDs.FUSE)
		t.Logf("%d containers of %d images, containerd %s\nbefore:  %v\nduring:  %v\npeak:    %v (%d samples)\nafter:   %v",
			loadContainers, len(imgs), f.Name, before, during, peak.usage, peak.samples, after)
		if peak.cache > loadCacheMax+loadCacheSlack {
			t.Errorf("chunk cache held %s, beyond its bound of %s", testbed.MiBString(peak.cache), testbed.MiBString(loadCacheMax))
		}
	})
}

// pullAll pulls the images into lazypull at once and requires each pull
// to be lazy.
func pullAll(t *testing.T, ctx context.Context, lb *lazyBed, imgs []loadImage) {
	t.Helper()
	errs := make([]error, len(imgs))
	var wg sync.WaitGroup
	for i, img := range imgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = pullLazilyErr(ctx, lb, img.ref)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	cl := lb.Containerd.Client(t)
	nctx := namespaces.WithNamespace(ctx, lb.Containerd.Namespace)
	for _, img := range imgs {
		requireLazy(t, ctx, lb, cl, inspectImage(t, nctx, cl, img.ref))
	}
}

// pullLazilyErr is pullLazily for any goroutine.
func pullLazilyErr(ctx context.Context, lb *lazyBed, ref string) error {
	ctrd := lb.Containerd
	if ctrd.Flavour.ConfigVersion >= 3 {
		return ctrd.Pull(ctx, testbed.SnapshotterName, ref)
	}
	cmd := exec.CommandContext(ctx, lazypullBin, "pull", "--address", ctrd.Address, "--namespace", ctrd.Namespace,
		"--snapshotter", testbed.SnapshotterName, "--hosts-dir", lb.HostsDir, ref)
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("lazypull pull %s: %v\n%s", ref, err, out.String())
	}
	return nil
}

// readAll has every reader hash every file of its image at once and fails
// t unless each answer is right.
func readAll(t *testing.T, readers []*reader, imgs []loadImage, when string) {
	t.Helper()
	want := make([]string, len(imgs))
	for i, img := range imgs {
		want[i] = probeOutput(t, img.tree, img.paths...)
	}
	errs := make([]error, len(readers))
	var wg sync.WaitGroup
	for i, r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			img := i % len(imgs)
			lines, err := r.ask(imgs[img].paths, loadReadBound)
			if err != nil {
				errs[i] = fmt.Errorf("container %d: %w", i, err)
				return
			}
			errs[i] = sameLines(strings.Join(lines, "\n")+"\n", want[img])
			if errs[i] != nil {
				errs[i] = fmt.Errorf("container %d (image %d): %w", i, img, errs[i])
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("%s: %v", when, err)
	}
}

// sameLines returns an error naming the first line where got and want
// differ.
func sameLines(got, want string) error {
	if got == want {
		return nil
	}
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := range min(len(g), len(w)) {
		if g[i] != w[i] {
			return fmt.Errorf("line %d: read %q, want %q", i+1, g[i], w[i])
		}
	}
	return fmt.Errorf("read %d lines, want %d", len(g), len(w))
}

// stopAll stops the readers at once; their containers exit and are
// removed with their snapshots.
func stopAll(t *testing.T, readers []*reader) {
	t.Helper()
	errs := make([]error, len(readers))
	var wg sync.WaitGroup
	for i, r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = r.stop()
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

// removeAll removes the images with containerd's garbage collection
// (ctr image rm --sync) and waits until lazypull has no snapshot and no
// mounted layer left.
func removeAll(t *testing.T, ctx context.Context, lb *lazyBed, imgs []loadImage) {
	t.Helper()
	args := []string{"image", "rm", "--sync"}
	for _, img := range imgs {
		args = append(args, img.ref)
	}
	if _, err := lb.Containerd.Ctr(ctx, args...); err != nil {
		t.Fatal(err)
	}
	ss := lb.Containerd.Client(t).SnapshotService(testbed.SnapshotterName)
	nctx := namespaces.WithNamespace(ctx, lb.Containerd.Namespace)
	waitUntil(t, ctx, "lazypull to have no snapshot and no layer mounted", func() bool {
		n := 0
		err := ss.Walk(nctx, func(context.Context, snapshots.Info) error { n++; return nil })
		ms, merr := testbed.LazyMounts(lb.Lazypulld.Root)
		return err == nil && n == 0 && merr == nil && len(ms) == 0
	})
}

// settle waits until the usage has come back within the bounds from
// before, or fails t with what is still beyond them, and returns it.
func settle(t *testing.T, ctx context.Context, m *meter, before usage, mounts int) usage {
	t.Helper()
	// Long enough for idle connections to be closed: a leak of them, or
	// of the goroutines that serve them, is not forgiven either.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		after, err := m.measure(ctx, true)
		if err != nil {
			t.Fatal(err)
		}
		over := beyond(before, after, mounts)
		if len(over) == 0 {
			return after
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Errorf("after the containers and images were removed:\n%s\nbefore: %v\nafter:  %v", strings.Join(over, "\n"), before, after)
			return after
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// splicePipes bounds the pipes go-fuse keeps for splicing reads of the
// given number of mounts: a pair per request answered at once, at most one
// per reader goroutine of a mount's server (GOMAXPROCS of them, 2 to 16).
func splicePipes(mounts int) int {
	return 2 * mounts * min(max(runtime.NumCPU(), 2), 16)
}

// beyond lists how after exceeds the bounds that before, the load test's
// slack and the number of layers that were mounted set.
func beyond(before, after usage, mounts int) []string {
	var over []string
	check := func(ok bool, format string, args ...any) {
		if !ok {
			over = append(over, fmt.Sprintf(format, args...))
		}
	}
	b, a := before, after
	check(a.planeFDs.FUSE <= b.planeFDs.FUSE, "data plane holds %d /dev/fuse descriptors, %d before", a.planeFDs.FUSE, b.planeFDs.FUSE)
	check(a.planeFDs.Other <= b.planeFDs.Other+fdSlack, "data plane holds %d descriptors that are not sockets, pipes or /dev/fuse, %d before: %v, before %v",
		a.planeFDs.Other, b.planeFDs.Other, a.planeFDs.others, b.planeFDs.others)
	check(a.planeFDs.Pipes <= b.planeFDs.Pipes+splicePipes(mounts), "data plane holds %d pipes, %d before", a.planeFDs.Pipes, b.planeFDs.Pipes)
	sockets := a.planeFDs.Sockets - b.planeFDs.Sockets
	check(sockets <= idleSockets, "data plane holds %d more sockets than before, beyond the idle connections' %d", sockets, idleSockets)
	check(a.rt.Goroutines <= b.rt.Goroutines+2*max(sockets, 0)+goroutineSlack,
		"data plane runs %d goroutines, %d before, with %d more sockets", a.rt.Goroutines, b.rt.Goroutines, sockets)
	check(a.rt.HeapAlloc <= b.rt.HeapAlloc+heapSlack, "data plane's live heap is %s, %s before",
		testbed.MiBString(int64(a.rt.HeapAlloc)), testbed.MiBString(int64(b.rt.HeapAlloc)))
	check(a.daemonFDs.Sockets <= b.daemonFDs.Sockets+daemonIdleSockets, "daemon holds %d sockets, %d before", a.daemonFDs.Sockets, b.daemonFDs.Sockets)
	check(a.daemonFDs.FUSE+a.daemonFDs.Pipes+a.daemonFDs.Other <= b.daemonFDs.FUSE+b.daemonFDs.Pipes+b.daemonFDs.Other+fdSlack,
		"daemon holds %d descriptors other than sockets, %d before: %v, before %v", a.daemonFDs.FUSE+a.daemonFDs.Pipes+a.daemonFDs.Other,
		b.daemonFDs.FUSE+b.daemonFDs.Pipes+b.daemonFDs.Other, a.daemonFDs.others, b.daemonFDs.others)
	check(a.daemon.Threads <= b.daemon.Threads+daemonThreadSlack, "daemon runs %d threads, %d before", a.daemon.Threads, b.daemon.Threads)
	check(a.cache <= loadCacheMax, "chunk cache holds %s, beyond its bound of %s", testbed.MiBString(a.cache), testbed.MiBString(loadCacheMax))
	return over
}
