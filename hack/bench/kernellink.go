package main

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// kernelLink is the emulated link as the kernel's network path, so that
// TCP handshakes, slow start, congestion windows and the restart of idle
// connections happen as they do between a node and a registry. The
// registry gets a network namespace of its own, routed to the node through
// a second one that plays the network between them:
//
//	node 10.213.x.1 ─ veth ─ 10.213.x.2 [link] 10.213.x.5 ─ veth ─ 10.213.x.6 registry
//
// In the link namespace a token bucket filter (tc tbf) on each veth limits
// the rate in each direction, with a queue of one bandwidth-delay product,
// and an iptables NFQUEUE rule hands every forwarded packet to a delay line
// (delayLine) that holds it for half the round trip time. The two ends'
// namespaces are left alone: a packet held in the sender's own namespace
// would still count against its socket's TCP small queues (as the skb is
// not freed) and cap each connection at a few packets per delay, which no
// real link does. Offloads stay as they are: the kernel hands the queue
// GSO packets segmented, so the delay line and tbf see packets of the
// link's MTU (delayStats.MaxPacket shows it).
//
// The node end is in the current namespace, or in client when it is set
// (tests). Everything is removed with the scope it was made in.
type kernelLink struct {
	s           *scope
	link, srv   *netns
	client      *netns // nil: the current namespace
	nodeDev     string // the node's end of the first veth pair
	toNode      string // the link namespace's end towards the node
	toServer    string // the link namespace's end towards the registry
	node, regIP netip.Addr
	delay       *delayLineProc
	rtt         time.Duration
	rate        int64
}

// queueNum is the NFQUEUE number of the delay line (per namespace).
const queueNum = 0

// newKernelLink makes the namespaces <prefix> (the registry's) and
// <prefix>-link, the veth pairs, the addresses and the routes, and checks
// that the registry's address is routed through the link. The link is
// fast until Shape.
func newKernelLink(s *scope, prefix string, client *netns) (*kernelLink, error) {
	id := os.Getpid() % 8192
	base := netip.AddrFrom4([4]byte{10, 213, byte(id * 8 / 256), byte(id * 8 % 256)})
	at := func(i byte) netip.Addr {
		b := base.As4()
		b[3] += i
		return netip.AddrFrom4(b)
	}
	tag := "lpb" + strconv.Itoa(os.Getpid())
	if client != nil {
		tag = "lpt" + strconv.Itoa(os.Getpid())
	}
	k := &kernelLink{s: s, client: client, nodeDev: tag + "n", toNode: tag + "a", toServer: tag + "b",
		node: at(1), regIP: at(6)}
	k.srv = newNetns(s, prefix)
	k.link = newNetns(s, prefix+"-link")
	srvDev := tag + "s"

	var nodeNS []string
	if client != nil {
		nodeNS = []string{"netns", client.name}
	}
	steps := [][]string{
		append(append([]string{"link", "add", k.nodeDev}, nodeNS...), "type", "veth", "peer", "name", k.toNode, "netns", k.link.name),
		{"-n", k.link.name, "link", "add", k.toServer, "type", "veth", "peer", "name", srvDev, "netns", k.srv.name},
		{"-n", k.link.name, "addr", "add", at(2).String() + "/30", "dev", k.toNode},
		{"-n", k.link.name, "addr", "add", at(5).String() + "/30", "dev", k.toServer},
		{"-n", k.link.name, "link", "set", k.toNode, "up"},
		{"-n", k.link.name, "link", "set", k.toServer, "up"},
		{"-n", k.srv.name, "addr", "add", k.regIP.String() + "/30", "dev", srvDev},
		{"-n", k.srv.name, "link", "set", srvDev, "up"},
		{"-n", k.srv.name, "route", "add", "default", "via", at(5).String()},
	}
	for _, args := range steps {
		if err := command("ip", args...); err != nil {
			return nil, err
		}
		if args[0] == "link" && args[1] == "add" {
			// Deleting the namespaces deletes the pair too; this covers a
			// failure in between.
			s.Cleanup(func() { _ = client.ip("link", "delete", k.nodeDev) })
		}
	}
	for _, args := range [][]string{
		{"addr", "add", k.node.String() + "/30", "dev", k.nodeDev},
		{"link", "set", k.nodeDev, "up"},
		{"route", "add", at(4).String() + "/30", "via", at(2).String(), "dev", k.nodeDev},
	} {
		if err := client.ip(args...); err != nil {
			return nil, err
		}
	}
	// /proc/sys/net is the namespace's own (and sysctl(8) may not be
	// installed).
	if err := k.link.exec("sh", "-c", "echo 1 >/proc/sys/net/ipv4/ip_forward"); err != nil {
		return nil, err
	}
	return k, k.checkRoute()
}

// checkRoute makes sure that the node reaches the registry's address
// through the link and nowhere else.
func (k *kernelLink) checkRoute() error {
	args := []string{"route", "get", k.regIP.String()}
	if k.client != nil {
		args = append([]string{"-n", k.client.name}, args...)
	}
	out, err := commandOutput("ip", args...)
	if err != nil {
		return err
	}
	if f := strings.Fields(out); !slicesContainsPair(f, "dev", k.nodeDev) {
		return fmt.Errorf("the registry's address %s is not routed through %s: %s", k.regIP, k.nodeDev, strings.TrimSpace(out))
	}
	return nil
}

func slicesContainsPair(f []string, key, value string) bool {
	for i := 0; i+1 < len(f); i++ {
		if f[i] == key && f[i+1] == value {
			return true
		}
	}
	return false
}

// RegistryIP is the registry's address: it listens there, in the
// namespace ServerNS.
func (k *kernelLink) RegistryIP() netip.Addr { return k.regIP }

// ServerNS is the registry's namespace.
func (k *kernelLink) ServerNS() *netns { return k.srv }

// Shape gives the link its round trip time (half of it each way) and its
// rate (each direction).
func (k *kernelLink) Shape(rtt time.Duration, rate int64) error {
	if k.delay != nil {
		return fmt.Errorf("the link is shaped already")
	}
	k.rtt, k.rate = rtt, rate
	bdp := int64(float64(rate) / 8 * rtt.Seconds())
	for _, dev := range []string{k.toNode, k.toServer} {
		if err := k.link.exec(tbfArgs(dev, rate, bdp)...); err != nil {
			return err
		}
	}
	// What the line holds is what was sent in the last half round trip,
	// at most every congestion window at once: a few bandwidth-delay
	// products in packets of 1500 bytes, both directions.
	maxLen := uint32(min(4*bdp/1500+1024, 1<<16))
	d, err := startDelayLine(k.link.path, queueNum, maxLen, rtt/2, k.regIP, k.s.log)
	if err != nil {
		return err
	}
	k.delay = d
	k.s.Cleanup(func() {
		if err := d.Close(); err != nil {
			k.s.Errorf("delay line: %v", err)
		}
	})
	// No --queue-bypass: without its reader the link drops, as a cut
	// link would, instead of silently losing its delay.
	return k.link.exec("iptables", "-w", "-A", "FORWARD", "-j", "NFQUEUE", "--queue-num", strconv.Itoa(queueNum))
}

// tbfArgs limits what leaves dev to rate bits per second. The bucket holds
// a millisecond at the rate (at least two full-size packets); the queue
// holds limit bytes (at least 64 KiB), beyond which packets are dropped.
func tbfArgs(dev string, rate, limit int64) []string {
	burst := max(rate/8/1000, 2*1514)
	return []string{"tc", "qdisc", "replace", "dev", dev, "root", "tbf",
		"rate", strconv.FormatInt(rate, 10) + "bit", "burst", strconv.FormatInt(burst, 10),
		"limit", strconv.FormatInt(max(limit, 64<<10), 10)}
}

// Delivered returns the TCP payload bytes the registry sent to the node
// since the link was shaped.
func (k *kernelLink) Delivered() int64 {
	if k.delay == nil {
		return 0
	}
	return k.delay.Delivered()
}

// Err reports a delay line that ended: from then on the link drops
// every packet.
func (k *kernelLink) Err() error {
	if k.delay == nil {
		return nil
	}
	return k.delay.Err()
}

// linkDrops are the packets the link dropped: the kernel's queue of the
// delay line (full, or no reader) and the token bucket filters' queues.
type linkDrops struct {
	Queue     int64 `json:"queue"`      // nfnetlink_queue: queue_dropped + user_dropped
	RateLimit int64 `json:"rate_limit"` // tbf on both veths
}

// Drops reads the drop counters of the link namespace.
func (k *kernelLink) Drops() (linkDrops, error) {
	var d linkDrops
	out, err := k.link.output("cat", "/proc/net/netfilter/nfnetlink_queue")
	if err != nil {
		return d, err
	}
	if d.Queue, err = parseQueueDrops(out, queueNum); err != nil {
		return d, err
	}
	for _, dev := range []string{k.toNode, k.toServer} {
		out, err := k.link.output("tc", "-s", "qdisc", "show", "dev", dev)
		if err != nil {
			return d, err
		}
		n, err := parseTCDropped(out)
		if err != nil {
			return d, fmt.Errorf("%s: %w", dev, err)
		}
		d.RateLimit += n
	}
	return d, nil
}

// parseQueueDrops reads the line of queue in /proc/net/netfilter/
// nfnetlink_queue: queue number, portid, waiting, copy mode, copy range,
// queue_dropped, user_dropped, next id, 1.
func parseQueueDrops(s string, queue int) (int64, error) {
	for _, line := range strings.Split(s, "\n") {
		f := strings.Fields(line)
		if len(f) < 7 || f[0] != strconv.Itoa(queue) {
			continue
		}
		q, err1 := strconv.ParseInt(f[5], 10, 64)
		u, err2 := strconv.ParseInt(f[6], 10, 64)
		if err1 != nil || err2 != nil {
			return 0, fmt.Errorf("nfnetlink_queue: bad line %q", line)
		}
		return q + u, nil
	}
	return 0, fmt.Errorf("nfnetlink_queue: no queue %d (is the delay line bound?)", queue)
}

// parseTCDropped sums the "dropped N" counts of `tc -s qdisc show`.
func parseTCDropped(s string) (int64, error) {
	var total int64
	found := false
	f := strings.Fields(s)
	for i := 0; i+1 < len(f); i++ {
		if strings.TrimPrefix(f[i], "(") != "dropped" {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(f[i+1], ","), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("tc: bad dropped count %q", f[i+1])
		}
		total, found = total+n, true
	}
	if !found {
		return 0, fmt.Errorf("tc: no dropped count in %q", strings.TrimSpace(s))
	}
	return total, nil
}
