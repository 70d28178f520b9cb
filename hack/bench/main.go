// Command bench is lazypull's end-to-end benchmark (`make bench`, as
// root): how long containers take to start, and how much they pull, when
// their image is pulled normally into containerd's overlayfs snapshotter
// and when it is mounted lazily by lazypulld, over an emulated network link.
//
// It builds its images (Debian with python3, a JDK, nginx, C headers,
// sqlite3 and a database: hack/rootfs.sh and hack/mkimage, converted with
// `lazypull convert`), serves them from a distribution registry in a
// network namespace of its own and reaches it over an emulated link: by
// default (-link kernel) the kernel's network path, routed through a
// second namespace where tbf limits the rate and an NFQUEUE delay line
// delays every packet (kernellink.go); with -link proxy, the optimistic
// emulation of earlier versions, a TCP proxy on 127.0.0.1 that adds the
// round trip time per connection and per write. It checks the link and
// prints what it found. Then, for each image, workload and mode, it makes
// -runs cold runs (fresh containerd 2.x and lazypulld, no content,
// snapshots or chunk cache), optionally beside -cpu-hog busy loops, and
// prints the medians, ranges and lazypull/overlayfs ratios, and writes
// results.json and chart.png to -out.
//
// Everything it starts (namespace, processes, mounts) is removed at exit,
// also on failure and on Ctrl-C.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/lazypull/lazypull/integration/testbed"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == hogArg {
		hog()
	}
	if len(os.Args) > 1 && os.Args[1] == delayLineArg {
		os.Exit(runDelayLine(os.Args[2:]))
	}
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

// options are the command line flags.
type options struct {
	runs      int
	rtt       time.Duration
	rate      int64 // bits per second
	out       string
	bin       string
	images    []string
	workloads []string
	prio      bool
	profiled  bool
	fsConfig  string // TOML keys of lazypulld's [fs] table
	logs      bool   // keep lazypulld's debug log of every lazy run
	convert   []string
	link      string // linkKernel or linkProxy
	cpuHog    int    // busy loops beside the runs
}

// Links: how the network between the node and the registry is emulated.
const (
	linkKernel = "kernel" // per packet, in the kernel's network path
	linkProxy  = "proxy"  // a delaying TCP proxy on loopback: optimistic
)

func parseFlags(args []string, stderr io.Writer) (options, error) {
	o := options{}
	fset := flag.NewFlagSet("bench", flag.ContinueOnError)
	fset.SetOutput(stderr)
	fset.IntVar(&o.runs, "runs", 5, "cold runs per image, workload and mode")
	fset.DurationVar(&o.rtt, "rtt", 40*time.Millisecond, "round trip time of the emulated link")
	rate := fset.String("rate", "200mbit", "bandwidth of the emulated link (kbit, mbit, gbit)")
	fset.StringVar(&o.out, "out", "bench-results", "`DIR` for results.json, chart.png and bench.log")
	fset.StringVar(&o.bin, "bin", "bin", "`DIR` holding lazypulld and lazypull (make build)")
	fset.BoolVar(&o.prio, "prioritized", true, "also benchmark the start workload with an eStargz image whose layers start with the files it reads (recorded by running it once), which lazypulld prefetches")
	fset.BoolVar(&o.profiled, "profile", true, "also benchmark the start workload with a learned start-up profile: a first node records the workload's start and publishes the profile as a referrer of the image (lazypull profile push); every cold run of the mode is a fresh node that fetches it")
	fset.StringVar(&o.fsConfig, "fs-config", "", "`TOML` keys for lazypulld's [fs] table, e.g. 'readahead_size = \"512KiB\"', to compare settings")
	fset.BoolVar(&o.logs, "logs", false, "run lazypulld at debug level and keep its log of every run in DIR/logs (each fetch with its offset, size and duration)")
	convert := fset.String("convert-flags", "", "more `FLAGS` for lazypull convert, space separated, e.g. '--chunk-size 1048576', to compare layouts")
	fset.StringVar(&o.link, "link", linkKernel, "the emulated link: kernel (every packet delayed in the kernel's network path, as on a real network) or proxy (a delaying TCP proxy on loopback, optimistic: no slow start, no cost of new or idle connections)")
	fset.IntVar(&o.cpuHog, "cpu-hog", 0, "`N` busy loops (processes) running beside the link check and every run, for speed under CPU contention")
	imgs := fset.String("images", strings.Join(imageNames(), ","), "images to benchmark, comma separated")
	wls := fset.String("workloads", "start,"+readAll.Name, "workloads, comma separated: start (the image's program), "+readAll.Name+" (every file)")
	if err := fset.Parse(args[1:]); err != nil {
		return o, err
	}
	if fset.NArg() != 0 {
		return o, fmt.Errorf("unexpected arguments: %s", strings.Join(fset.Args(), " "))
	}
	var err error
	if o.rate, err = parseRate(*rate); err != nil {
		return o, err
	}
	if o.runs < 1 || o.rtt < 0 || o.cpuHog < 0 {
		return o, fmt.Errorf("-runs must be at least 1, -rtt and -cpu-hog not negative")
	}
	if o.link != linkKernel && o.link != linkProxy {
		return o, fmt.Errorf("-link: want %s or %s, not %q", linkKernel, linkProxy, o.link)
	}
	o.images, o.workloads = strings.Split(*imgs, ","), strings.Split(*wls, ",")
	for _, n := range o.images {
		if specByName(n) == nil {
			return o, fmt.Errorf("-images: no image %q", n)
		}
	}
	for _, w := range o.workloads {
		if w != "start" && w != readAll.Name {
			return o, fmt.Errorf("-workloads: no workload %q", w)
		}
	}
	o.convert = strings.Fields(*convert)
	return o, nil
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "bench: %v\n", err)
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(stderr, "bench: run as root (network namespaces, containerd, runc and FUSE need it)")
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b, err := newBench(o, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "bench: %v\n", err)
		return 1
	}
	err = b.top.do(func() error { return b.run(ctx, stdout) })
	if ctx.Err() != nil {
		fmt.Fprintln(stderr, "bench: interrupted; cleaning up")
	}
	failed := b.top.close()
	b.logFile.Close()
	switch {
	case err != nil:
		fmt.Fprintf(stderr, "bench: %v\nbench: the log is %s\n", err, b.logFile.Name())
		return 1
	case failed || b.teardownFailed:
		fmt.Fprintf(stderr, "bench: something could not be torn down cleanly; see %s\n", b.logFile.Name())
		return 1
	case b.runsFailed > 0:
		fmt.Fprintf(stderr, "bench: %d runs failed; see %s\n", b.runsFailed, b.logFile.Name())
		return 1
	}
	return 0
}

// bench is one benchmark: its options, what it started and what it found.
type bench struct {
	options
	stderr  io.Writer
	logFile *os.File
	log     io.Writer
	top     *scope // owns the namespace, registry, link and work dir

	repo     string
	flavour  testbed.Flavour
	registry *testbed.Registry
	host     string      // the registry as the node reaches it: host:port
	net      network     // the link to it
	klink    *kernelLink // the link, with -link kernel
	work     string
	hostsDir string

	runTimeout     time.Duration
	teardownFailed bool
	runsFailed     int
}

func newBench(o options, stderr io.Writer) (*bench, error) {
	repo, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(repo, "hack", "rootfs.sh")); err != nil {
		return nil, fmt.Errorf("run from the repository's top directory: %w", err)
	}
	if o.bin, err = filepath.Abs(o.bin); err != nil {
		return nil, err
	}
	for _, n := range []string{"lazypulld", "lazypull"} {
		if _, err := os.Stat(filepath.Join(o.bin, n)); err != nil {
			return nil, fmt.Errorf("%w: run `make build`", err)
		}
	}
	flavour, err := testbed.Containerd2()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(o.out, "bench.log"))
	if err != nil {
		return nil, err
	}
	b := &bench{options: o, stderr: stderr, logFile: logFile, log: logFile, repo: repo, flavour: flavour, runTimeout: 15 * time.Minute}
	b.top = newScope("bench", logFile)
	return b, nil
}

// run sets up the link and the images, makes the runs and reports.
func (b *bench) run(ctx context.Context, stdout io.Writer) error {
	started := time.Now()
	shape, err := b.setupLink()
	if err != nil {
		return err
	}
	b.work = testbed.Dir(b.top, "bench")
	b.hostsDir = filepath.Join(b.work, "certs.d")
	if err := testbed.WritePlainHTTPHost(b.hostsDir, b.host); err != nil {
		return err
	}

	imgs, err := b.buildImages(ctx)
	if err != nil {
		return err
	}
	// Only now the link gets slow: building and pushing ran at full speed.
	if err := shape(); err != nil {
		return err
	}
	if b.cpuHog > 0 {
		if err := startHogs(b.top, b.cpuHog); err != nil {
			return err
		}
		b.progress("%d busy loops run beside the link check and the runs (-cpu-hog)", b.cpuHog)
	}
	check, err := checkLink(ctx, b.link, b.host, imgs[0].GzipRef, b.klink)
	if err != nil {
		return fmt.Errorf("link check: %w", err)
	}
	b.progress("%s", check)
	var drops0 linkDrops
	if b.klink != nil {
		if drops0, err = b.klink.Drops(); err != nil {
			return err
		}
	}

	var results []result
	for i := 1; i <= b.runs; i++ {
		for _, img := range imgs {
			for _, w := range b.workloadsOf(img) {
				ms := b.modesOf(img, w)
				ms = append(ms[i%len(ms):], ms[:i%len(ms)]...) // rotate: no mode always runs first
				for _, m := range ms {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					r := b.coldRun(ctx, img, w, m, i)
					b.progress("%s", r.String(b.runs))
					if r.Error != "" {
						b.runsFailed++
						if ctx.Err() != nil {
							return ctx.Err()
						}
					}
					results = append(results, r)
				}
			}
		}
	}
	rep := newReport(b, imgs, results, check, time.Since(started))
	if b.klink != nil {
		if rep.LinkDuringRuns, err = b.linkDuringRuns(drops0); err != nil {
			return err
		}
	}
	rep.print(stdout)
	if err := rep.write(b.out); err != nil {
		return err
	}
	b.progress("results in %s (results.json, chart.png, bench.log)", b.out)
	return nil
}

func (b *bench) buildImages(ctx context.Context) ([]*image, error) {
	mk := filepath.Join(b.work, "mkimage")
	if err := command("go", "build", "-o", mk, "./hack/mkimage"); err != nil {
		return nil, err
	}
	bl := &builder{repo: b.repo, work: b.work, bin: b.bin, host: b.host, convertArgs: b.convert, log: b.log}
	var imgs []*image
	for _, n := range b.images {
		t := time.Now()
		b.progress("image %s: building (the first build of its root filesystem takes minutes)", n)
		img, err := bl.build(ctx, *specByName(n))
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", n, err)
		}
		b.progress("image %s: %d layers, gzip %s, eStargz %s, %d chunks (%s uncompressed) (%.0fs)", n, img.Layers,
			mib(img.GzipBytes), mib(img.EstargzBytes), img.Local.Entries, mib(img.Local.Bytes), time.Since(t).Seconds())
		if b.prio && slices.Contains(b.workloads, img.Spec.Start.Name) {
			t = time.Now()
			files, err := b.recordStart(ctx, img)
			if err != nil {
				return nil, fmt.Errorf("image %s: record the files %s reads: %w", n, img.Spec.Start.Name, err)
			}
			list := filepath.Join(b.out, n+".prioritized")
			if err := writeList(list, fmt.Sprintf("files read by %s in %s, recorded by hack/bench", strings.Join(img.Spec.Start.Args, " "), n), files); err != nil {
				return nil, err
			}
			if img.PrioRef, err = bl.convert(ctx, img.GzipRef, n+":estargz-prio", "--prioritize", list); err != nil {
				return nil, fmt.Errorf("image %s: %w", n, err)
			}
			img.PrioFiles = len(files)
			b.progress("image %s: %d files read by %s first in the layers of %s (%.0fs)", n, len(files),
				strings.Join(img.Spec.Start.Args, " "), img.PrioRef, time.Since(t).Seconds())
		}
		if b.profiled && slices.Contains(b.workloads, img.Spec.Start.Name) {
			t = time.Now()
			if img.ProfileChunks, err = b.learnProfile(ctx, img); err != nil {
				img.ProfileSkipped = err.Error()
				b.progress("image %s: %s mode skipped: no profile learned: %v", n, modeLazyProfile, err)
			} else {
				b.progress("image %s: a profile of %d chunks (%s) learned from %s and published (%.0fs)", n, img.ProfileChunks,
					profileNote, strings.Join(img.Spec.Start.Args, " "), time.Since(t).Seconds())
			}
		}
		imgs = append(imgs, img)
	}
	return imgs, nil
}

func (b *bench) workloadsOf(img *image) []workload {
	var ws []workload
	for _, n := range b.workloads {
		if n == readAll.Name {
			ws = append(ws, readAll)
		} else {
			ws = append(ws, img.Spec.Start)
		}
	}
	return ws
}

// modesOf lists the modes that w runs in on img.
func (b *bench) modesOf(img *image, w workload) []string {
	ms := []string{modeOverlay, modeLazy}
	if w.Name != img.Spec.Start.Name {
		return ms
	}
	if img.PrioRef != "" {
		ms = append(ms, modeLazyPrio)
	}
	if img.ProfileChunks > 0 {
		ms = append(ms, modeLazyProfile)
	}
	return ms
}

// progress prints a line on stderr and in the log.
func (b *bench) progress(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	fmt.Fprintf(b.stderr, "bench: %s\n", msg)
	fmt.Fprintf(b.log, "%s bench: %s\n", time.Now().Format("15:04:05.000"), msg)
}

func specByName(n string) *imageSpec {
	for i := range images {
		if images[i].Name == n {
			return &images[i]
		}
	}
	return nil
}
