package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"

	"github.com/lazypull/lazypull/integration/testbed"
)

// network is the emulated link between the node (containerd, lazypulld)
// and the registry.
type network interface {
	// Delivered returns the bytes carried from the registry to the node
	// so far: TCP payload, so HTTP headers and bodies.
	Delivered() int64
}

var (
	_ network = (*kernelLink)(nil)
	_ network = (*link)(nil)
)

// setupLink starts the registry behind the link of -link and returns the
// function that gives the link its round trip time and rate.
func (b *bench) setupLink() (shape func() error, err error) {
	prefix := "lpbench-" + strconv.Itoa(os.Getpid())
	if b.link == linkProxy {
		b.progress("link: proxy (optimistic: a delaying TCP proxy on loopback), RTT %v, %s; registry in network namespace %s", b.rtt, formatRate(b.rate), prefix)
		ns := newNetns(b.top, prefix)
		b.registry = testbed.StartRegistryWith(b.top, testbed.RegistryOptions{NetNS: ns.path, Dial: ns.dial})
		l, err := startLink(b.registry.Host, ns.dial)
		if err != nil {
			return nil, err
		}
		b.top.Cleanup(func() { l.Close() })
		b.net, b.host = l, l.Addr()
		return func() error {
			if err := ns.shape(b.rate); err != nil {
				return err
			}
			l.SetRTT(b.rtt)
			return nil
		}, nil
	}
	k, err := newKernelLink(b.top, prefix, nil)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	b.registry = testbed.StartRegistryWith(b.top, testbed.RegistryOptions{NetNS: k.ServerNS().path, Dial: d.DialContext, Listen: k.RegistryIP().String()})
	b.net, b.klink, b.host = k, k, b.registry.Host
	b.progress("link: kernel, RTT %v, %s; registry at %s in network namespace %s, routed through %s-link", b.rtt, formatRate(b.rate), b.host, prefix, prefix)
	return func() error { return k.Shape(b.rtt, b.rate) }, nil
}

// linkRuns is what the kernel link did from the link check's end to the
// last run's.
type linkRuns struct {
	Drops     linkDrops  `json:"drops"`
	DelayLine delayStats `json:"delay_line"` // since the link was shaped
}

func (b *bench) linkDuringRuns(drops0 linkDrops) (*linkRuns, error) {
	d, err := b.klink.Drops()
	if err != nil {
		return nil, err
	}
	d.Queue -= drops0.Queue
	d.RateLimit -= drops0.RateLimit
	return &linkRuns{Drops: d, DelayLine: b.klink.delay.stats()}, nil
}

func (l *linkRuns) String() string {
	return fmt.Sprintf("link during the runs: %d packets dropped by the rate limit's queue, %d by the delay line's; delay line since the link was shaped: %s",
		l.Drops.RateLimit, l.Drops.Queue, l.DelayLine)
}

// hogArg is the argument with which the benchmark's binary runs as one busy
// loop of -cpu-hog.
const hogArg = "cpu-hog-loop"

// hog spins until killed.
func hog() {
	for {
	}
}

// startHogs starts n busy loops, copies of this binary, stopped with s.
func startHogs(s *scope, n int) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	for range n {
		cmd := exec.Command(self, hogArg)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("cpu hog: %w", err)
		}
		s.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
	}
	return nil
}
