package integration

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lazypull/lazypull/dataplane"
	"github.com/lazypull/lazypull/integration/testbed"
	"github.com/lazypull/lazypull/integration/testimage"
)

// loadImage is an image of the load test: a base layer that every such
// image shares, a layer of its own and a top layer that changes the base.
type loadImage struct {
	ref  string
	tree testimage.Tree
	// paths are the image's regular files, absolute, sorted.
	paths []string
}

// loadLayers returns the layers of load image i. Its own files are
// pseudo-random, so that no chunk of one image is a chunk of another.
func loadLayers(entry []byte, i int) []testimage.Layer {
	base := []testimage.Entry{
		testimage.File(testimage.EntrypointPath, 0o755, entry),
		testimage.Dir("base", 0o755),
		testimage.File("base/blob", 0o644, testimage.Pseudo(1000, 3<<20+777)),
	}
	for j := range 200 {
		base = append(base, testimage.File(fmt.Sprintf("base/f%04d", j), 0o644, fmt.Appendf(nil, "shared file %d\n", j)))
	}
	own := []testimage.Entry{
		testimage.Dir("img", 0o755),
		testimage.File("img/blob", 0o644, testimage.Pseudo(uint64(2000+i), 5<<20+4099*i)),
	}
	for j := range 300 {
		if j%100 == 0 {
			own = append(own, testimage.Dir(fmt.Sprintf("img/d%d", j/100), 0o755))
		}
		data := fmt.Appendf(nil, "image %d file %d\n", i, j)
		data = append(data, testimage.Pseudo(uint64(3000+1000*i+j), j*7)...)
		own = append(own, testimage.File(fmt.Sprintf("img/d%d/f%04d", j/100, j), 0o644, data))
	}
	top := []testimage.Entry{
		testimage.Dir("base", 0o755),
		testimage.File("base/f0001", 0o644, fmt.Appendf(nil, "image %d replaced this shared file\n", i)),
		testimage.Whiteout("base/f0002"),
	}
	return []testimage.Layer{{Entries: base}, {Entries: own}, {Entries: top}}
}

// pushLoadImages builds n load images, pushes them to lb's registry and
// converts them to eStargz, all at once.
func pushLoadImages(t *testing.T, ctx context.Context, lb *lazyBed, n int) []loadImage {
	t.Helper()
	entry, err := os.ReadFile(entrypointBin)
	if err != nil {
		t.Fatal(err)
	}
	imgs := make([]loadImage, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			imgs[i], errs[i] = pushLoadImage(ctx, lb, entry, i)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return imgs
}

func pushLoadImage(ctx context.Context, lb *lazyBed, entry []byte, i int) (loadImage, error) {
	layers := loadLayers(entry, i)
	tree, err := testimage.Flatten(layers)
	if err != nil {
		return loadImage{}, err
	}
	img, err := testimage.Image(layers, []string{"/" + testimage.EntrypointPath})
	if err != nil {
		return loadImage{}, err
	}
	orig := lb.Registry.Ref(fmt.Sprintf("lazypull/load%d:1", i))
	if _, err := testimage.Push(ctx, orig, img); err != nil {
		return loadImage{}, err
	}
	ref := lb.Registry.Ref(fmt.Sprintf("lazypull/load%d:esgz", i))
	if out, err := lazypullConvert(ctx, orig, ref); err != nil {
		return loadImage{}, fmt.Errorf("lazypull convert %s: %v\n%s", orig, err, out)
	}
	li := loadImage{ref: ref, tree: tree}
	for p, n := range tree {
		if n.Type == testimage.TypeReg {
			li.paths = append(li.paths, "/"+p)
		}
	}
	slices.Sort(li.paths)
	return li, nil
}

// usage is what the daemon and its data plane hold at a moment.
type usage struct {
	daemon testbed.ProcStats
	plane  testbed.ProcStats
	// daemonFDs and planeFDs sort the descriptors by kind.
	daemonFDs, planeFDs fdKinds
	rt                  dataplane.Runtime
	// cache is the bytes of the entries in the chunk cache.
	cache int64
}

func (u usage) String() string {
	return fmt.Sprintf("daemon: %v (%v); data plane: %v (%v), %d goroutines, heap %s (in use %s, %d objects), Go runtime sys %s; chunk cache %s",
		u.daemon, u.daemonFDs, u.plane, u.planeFDs, u.rt.Goroutines, testbed.MiBString(int64(u.rt.HeapAlloc)),
		testbed.MiBString(int64(u.rt.HeapInuse)), u.rt.HeapObjects, testbed.MiBString(int64(u.rt.Sys)), testbed.MiBString(u.cache))
}

// fdKinds counts a process's descriptors by what they are.
type fdKinds struct {
	FUSE, Sockets, Pipes, Other int
	// others are what the Other descriptors are open on.
	others []string
}

func (k fdKinds) String() string {
	return fmt.Sprintf("%d /dev/fuse, %d sockets, %d pipes, %d other", k.FUSE, k.Sockets, k.Pipes, k.Other)
}

// max returns the highest count of each kind of k and o.
func (k fdKinds) max(o fdKinds) fdKinds {
	return fdKinds{FUSE: max(k.FUSE, o.FUSE), Sockets: max(k.Sockets, o.Sockets), Pipes: max(k.Pipes, o.Pipes), Other: max(k.Other, o.Other)}
}

func readFDKinds(pid int) (fdKinds, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fdKinds{}, err
	}
	var k fdKinds
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		switch {
		case err != nil: // closed meanwhile
		case target == "/dev/fuse":
			k.FUSE++
		case strings.HasPrefix(target, "socket:"):
			k.Sockets++
		case strings.HasPrefix(target, "pipe:"):
			k.Pipes++
		default:
			k.Other++
			k.others = append(k.others, target)
		}
	}
	return k, nil
}

// meter measures a lazyBed's daemon and its one data plane.
type meter struct {
	lb       *lazyBed
	plane    *dataplane.Client
	planePID int
	cacheDir string
}

func newMeter(t *testing.T, ctx context.Context, lb *lazyBed) *meter {
	t.Helper()
	dp := onePlane(t, ctx, lb)
	m := &meter{
		lb:       lb,
		plane:    dataplane.NewClient(filepath.Join(dp.Dir, "sock")),
		planePID: dp.Info.PID,
		cacheDir: filepath.Join(lb.Lazypulld.Root, "cache"),
	}
	t.Cleanup(m.plane.Close)
	return m
}

// measure reads the usage now; with gc, the data plane collects its
// garbage first, so that its heap is what is live.
func (m *meter) measure(ctx context.Context, gc bool) (usage, error) {
	var u usage
	var err error
	if u.rt, err = m.plane.Runtime(ctx, gc); err != nil {
		return u, err
	}
	if u.daemon, err = testbed.ReadProcStats(m.lb.Lazypulld.PID()); err != nil {
		return u, fmt.Errorf("daemon: %w", err)
	}
	if u.daemonFDs, err = readFDKinds(m.lb.Lazypulld.PID()); err != nil {
		return u, fmt.Errorf("daemon: %w", err)
	}
	if u.plane, err = testbed.ReadProcStats(m.planePID); err != nil {
		return u, fmt.Errorf("data plane: %w", err)
	}
	if u.planeFDs, err = readFDKinds(m.planePID); err != nil {
		return u, fmt.Errorf("data plane: %w", err)
	}
	u.cache, err = cacheBytes(m.cacheDir)
	return u, err
}

// cacheBytes sums the sizes of the entries of the chunk cache at dir
// (the files under its digest directories; not what is being written).
func cacheBytes(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(filepath.Join(dir, "sha256"), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // evicted meanwhile, or no entry yet
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			n += fi.Size()
		}
		return nil
	})
	return n, err
}

// peaks is the highest of each usage a sampler saw.
type peaks struct {
	usage
	samples int
	err     error
}

func (p *peaks) add(u usage) {
	p.samples++
	m := &p.usage
	m.daemon.RSS, m.daemon.Threads, m.daemon.FDs = max(m.daemon.RSS, u.daemon.RSS), max(m.daemon.Threads, u.daemon.Threads), max(m.daemon.FDs, u.daemon.FDs)
	m.daemon.HWM = max(m.daemon.HWM, u.daemon.HWM)
	m.plane.RSS, m.plane.Threads, m.plane.FDs = max(m.plane.RSS, u.plane.RSS), max(m.plane.Threads, u.plane.Threads), max(m.plane.FDs, u.plane.FDs)
	m.plane.HWM = max(m.plane.HWM, u.plane.HWM)
	m.planeFDs = m.planeFDs.max(u.planeFDs)
	m.daemonFDs = m.daemonFDs.max(u.daemonFDs)
	m.rt.Goroutines, m.rt.HeapAlloc, m.rt.HeapInuse = max(m.rt.Goroutines, u.rt.Goroutines), max(m.rt.HeapAlloc, u.rt.HeapAlloc), max(m.rt.HeapInuse, u.rt.HeapInuse)
	m.rt.HeapObjects, m.rt.Sys = max(m.rt.HeapObjects, u.rt.HeapObjects), max(m.rt.Sys, u.rt.Sys)
	m.cache = max(m.cache, u.cache)
}

// sample measures every interval until the returned function is called,
// which returns the peaks. The first error ends the sampling and is kept
// in peaks.err.
func (m *meter) sample(ctx context.Context, interval time.Duration) func() peaks {
	var p peaks
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			u, err := m.measure(ctx, false)
			if err != nil {
				p.err = err
				return
			}
			p.add(u)
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	return func() peaks {
		close(stop)
		<-done
		return p
	}
}
