package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// netns is a network namespace of our own, with only a loopback interface:
// the registry runs in it, behind a token bucket filter on its lo, and the
// delay proxy reaches it through sockets created inside it.
type netns struct {
	name string
	path string // /run/netns/<name>
	fd   int    // open on path, for setns
}

// newNetns creates the namespace lpbench-<pid>, brings up its lo with an
// Ethernet-sized MTU (so that the token bucket shapes packets of a real
// link's size) and registers its deletion with s.
func newNetns(s *scope) *netns {
	n := &netns{name: "lpbench-" + strconv.Itoa(os.Getpid())}
	n.path = filepath.Join("/run/netns", n.name)
	if err := command("ip", "netns", "add", n.name); err != nil {
		s.Fatalf("create network namespace: %v", err)
	}
	s.Cleanup(func() {
		if err := command("ip", "netns", "delete", n.name); err != nil {
			s.Errorf("delete network namespace %s: %v", n.name, err)
		}
	})
	fd, err := unix.Open(n.path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		s.Fatalf("open %s: %v", n.path, err)
	}
	s.Cleanup(func() { unix.Close(fd) })
	n.fd = fd
	if err := n.exec("ip", "link", "set", "dev", "lo", "mtu", "1500", "up"); err != nil {
		s.Fatalf("network namespace %s: %v", n.name, err)
	}
	return n
}

// exec runs a command inside the namespace.
func (n *netns) exec(args ...string) error {
	return command("ip", append([]string{"netns", "exec", n.name}, args...)...)
}

// shape limits what leaves the namespace's lo (so both directions of every
// connection in it) to rate bits per second with a token bucket filter.
// The bucket holds a few milliseconds of traffic at that rate, and at most
// 100 ms of packets wait in its queue.
func (n *netns) shape(rate int64) error {
	burst := max(rate/8/200, 64<<10) // 5 ms at the rate, at least 64 KiB
	return n.exec("tc", "qdisc", "replace", "dev", "lo", "root", "tbf",
		"rate", strconv.FormatInt(rate, 10)+"bit", "burst", strconv.FormatInt(burst, 10), "latency", "100ms")
}

// dial connects to addr from inside the namespace. The socket is created
// by a goroutine locked to a thread that enters the namespace for the
// dial and then returns to its own. Should it fail to return, the goroutine
// exits still locked and the runtime ends the thread rather than let it run
// other goroutines in the wrong namespace. (Threads must not end needlessly:
// the test bed starts processes with Pdeathsig, which fires when the
// thread that started them ends.)
func (n *netns) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		own, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, fmt.Errorf("open own network namespace: %w", err)}
			return
		}
		defer unix.Close(own)
		if err := unix.Setns(n.fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, fmt.Errorf("setns %s: %w", n.path, err)}
			return
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if unix.Setns(own, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// command runs a command, its output becoming part of the error.
func command(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
