package main

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// netns is a network namespace of our own. With the proxy link, the
// registry runs in one with only a loopback interface, behind a token
// bucket filter on its lo, and the delay proxy reaches it through sockets
// created inside it; the kernel link (kernellink.go) makes two.
type netns struct {
	name string
	path string // /run/netns/<name>
	fd   int    // open on path, for setns
}

// newNetns creates the namespace name, brings up its lo with an
// Ethernet-sized MTU (so that the token bucket of the proxy link shapes
// packets of a real link's size) and registers its deletion with s.
func newNetns(s *scope, name string) *netns {
	n := &netns{name: name}
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

// output runs a command inside the namespace and returns its output.
func (n *netns) output(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", n.name}, args...)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s in %s: %v: %s", strings.Join(args, " "), n.name, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// ip runs ip(8) with args in the namespace, or in the current one when n
// is nil.
func (n *netns) ip(args ...string) error {
	if n != nil {
		args = append([]string{"-n", n.name}, args...)
	}
	return command("ip", args...)
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

// dial connects to addr from inside the namespace.
func (n *netns) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNetns(n.fd, func() error {
		var err error
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// listen listens on addr inside the namespace.
func (n *netns) listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := inNetns(n.fd, func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// inNetns runs fn on a thread in the network namespace open at fd: the
// sockets fn creates belong to that namespace. The thread is a goroutine's,
// locked to it, that enters the namespace for fn and then returns to its
// own. Should it fail to return, the goroutine exits still locked and the
// runtime ends the thread rather than let it run other goroutines in the
// wrong namespace. (Threads must not end needlessly: the test bed starts
// processes with Pdeathsig, which fires when the thread that started them
// ends.)
func inNetns(fd int, fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		own, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("open own network namespace: %w", err)
			return
		}
		defer unix.Close(own)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("setns: %w", err)
			return
		}
		err = fn()
		if unix.Setns(own, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		ch <- err
	}()
	return <-ch
}

// command runs a command, its output becoming part of the error.
func command(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// commandOutput runs a command and returns its stdout.
func commandOutput(name string, args ...string) (string, error) {
	var stderr strings.Builder
	cmd := exec.Command(name, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}
