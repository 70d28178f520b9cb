package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// delayLine holds every packet that netfilter queues to it (an iptables
// NFQUEUE rule) for a fixed delay and then lets it go on (verdict ACCEPT),
// in the order the packets came. It is the propagation delay of the
// emulated link: one delay line in the namespace that routes between the
// node and the registry delays each direction by the one-way delay.
//
// It speaks netlink to the kernel's nfnetlink_queue itself (a bind, one
// configuration message, then packets in and batch verdicts out). One
// goroutine, locked to a thread of its own at real-time priority where the
// kernel allows it, waits in ppoll(2) for the next packet or the next
// release, so that neither Go's timers nor other processes' CPU load (the
// benchmark's -cpu-hog) delay a release.
//
// The kernel's queue is bounded (maxLen packets); a packet that finds it
// full is dropped, as on a real link (no --queue-bypass, no fail-open),
// and the kernel counts it (kernelLink.Drops). The bound is set far above
// the packets a link's bandwidth-delay product can hold, so that it is not
// hit.
//
// The benchmark runs it in a process of its own (delaylineproc.go), away
// from its own goroutines and garbage collection: the counters are then in
// memory shared with the benchmark.
type delayLine struct {
	fd     int // netlink socket, bound to the queue
	stopFd int // eventfd: Close wakes the loop through it
	queue  uint16
	delay  time.Duration
	down   netip.Addr // packets from this address travel to the node
	c      *lineCounters
	maxLen uint32
	// verdict is the batch verdict message, ACCEPT up to the id in its
	// last four bytes.
	verdict []byte

	done      chan struct{}
	err       error // why the loop ended, when not closed; read after done
	closeOnce sync.Once
}

// lineCounters are what a delay line counts. Only its loop writes them.
type lineCounters struct {
	packets   atomic.Int64
	bytes     atomic.Int64 // IP bytes, headers included
	payload   atomic.Int64 // TCP payload bytes from down to the node
	maxPacket atomic.Int64 // the largest IP packet seen
	lateNs    atomic.Int64 // sum over packets of release - due
	lateMaxNs atomic.Int64
	lateOver  atomic.Int64 // packets released more than lateMark late
	overflows atomic.Int64 // ENOBUFS: the socket's buffer overflowed
	realtime  atomic.Int64 // 1: the loop's thread runs SCHED_FIFO
}

// Constants of nfnetlink_queue (linux/netfilter/nfnetlink_queue.h), not in
// x/sys/unix.
const (
	nfqnlMsgPacket       = 0
	nfqnlMsgConfig       = 2
	nfqnlMsgVerdictBatch = 3

	nfqaPacketHdr  = 1
	nfqaVerdictHdr = 2
	nfqaPayload    = 10

	nfqaCfgCmd         = 1
	nfqaCfgParams      = 2
	nfqaCfgQueueMaxlen = 3
	nfqnlCfgCmdBind    = 1
	nfqnlCopyPacket    = 2

	nfAccept = 1

	// copyRange is how much of each packet the kernel copies to us: the
	// IPv4 and TCP headers, for the byte counts.
	copyRange = 80
)

// newDelayLine binds queue in the network namespace open at nsFd and
// starts delaying its packets by delay. maxLen bounds the kernel's queue.
// TCP payload from the address down is counted as delivered to the node.
// It counts in c.
func newDelayLine(nsFd int, queue uint16, maxLen uint32, delay time.Duration, down netip.Addr, c *lineCounters) (*delayLine, error) {
	fd, err := socketIn(nsFd, unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	d := &delayLine{fd: fd, stopFd: -1, queue: queue, delay: delay, down: down, c: c, maxLen: maxLen, done: make(chan struct{})}
	var v [8]byte
	binary.BigEndian.PutUint32(v[0:4], nfAccept)
	d.verdict = nfqMessage(nfqnlMsgVerdictBatch, unix.NLM_F_REQUEST, queue, attr(nfqaVerdictHdr, v[:]))
	if err := d.configure(maxLen); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("nfqueue %d: %w", queue, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if d.stopFd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		unix.Close(fd)
		return nil, err
	}
	started := make(chan struct{})
	go d.loop(started)
	<-started
	return d, nil
}

// socketIn creates a socket in the network namespace open at nsFd. The
// socket stays in that namespace whichever thread uses it.
func socketIn(nsFd, domain, typ, proto int) (int, error) {
	fd := -1
	err := inNetns(nsFd, func() error {
		var err error
		fd, err = unix.Socket(domain, typ, proto)
		return err
	})
	return fd, err
}

// configure binds the queue, asks for the first copyRange bytes of each
// packet and sets the queue's bound, and waits for the kernel's answer.
func (d *delayLine) configure(maxLen uint32) error {
	if err := unix.Bind(d.fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	// Packets waiting to be read must not overflow the socket's buffer;
	// the queue's bound stays the one limit.
	if err := unix.SetsockoptInt(d.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20); err != nil {
		return fmt.Errorf("SO_RCVBUFFORCE: %w", err)
	}
	var params [5]byte
	binary.BigEndian.PutUint32(params[:4], copyRange)
	params[4] = nfqnlCopyPacket
	var maxlen [4]byte
	binary.BigEndian.PutUint32(maxlen[:], maxLen)
	msg := nfqMessage(nfqnlMsgConfig, unix.NLM_F_REQUEST|unix.NLM_F_ACK, d.queue,
		attr(nfqaCfgCmd, []byte{nfqnlCfgCmdBind, 0, 0, 0}),
		attr(nfqaCfgParams, params[:]),
		attr(nfqaCfgQueueMaxlen, maxlen[:]))
	if err := unix.Sendto(d.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	for {
		n, _, err := unix.Recvfrom(d.fd, buf, 0)
		if err != nil {
			return err
		}
		for _, m := range netlinkMessages(buf[:n]) {
			if m.typ == unix.NLMSG_ERROR && len(m.data) >= 4 {
				if errno := int32(binary.NativeEndian.Uint32(m.data[:4])); errno != 0 {
					return fmt.Errorf("configure: %w", unix.Errno(-errno))
				}
				return nil
			}
		}
	}
}

// nfqMessage builds a netlink message of nfnetlink_queue: the header, the
// nfgenmsg naming the queue, then the attributes.
func nfqMessage(typ uint16, flags uint16, queue uint16, attrs ...[]byte) []byte {
	b := make([]byte, unix.NLMSG_HDRLEN+4)
	binary.NativeEndian.PutUint16(b[4:6], unix.NFNL_SUBSYS_QUEUE<<8|typ)
	binary.NativeEndian.PutUint16(b[6:8], flags)
	b[16] = unix.AF_UNSPEC
	b[17] = unix.NFNETLINK_V0
	binary.BigEndian.PutUint16(b[18:20], queue)
	for _, a := range attrs {
		b = append(b, a...)
	}
	binary.NativeEndian.PutUint32(b[0:4], uint32(len(b)))
	return b
}

// attr encodes a netlink attribute, padded to 4 bytes.
func attr(typ uint16, data []byte) []byte {
	b := make([]byte, 4, 4+len(data)+3)
	binary.NativeEndian.PutUint16(b[0:2], uint16(4+len(data)))
	binary.NativeEndian.PutUint16(b[2:4], typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// held is a packet in the line: its id and when it is due, in
// nanoseconds since the loop started.
type held struct {
	id  uint32
	due int64
}

// ring is the line's FIFO of held packets. Every packet has the same delay,
// so the FIFO is in the order they are due.
type ring struct {
	buf     []held
	head, n int
}

func (r *ring) full() bool    { return r.n == len(r.buf) }
func (r *ring) front() held   { return r.buf[r.head] }
func (r *ring) push(h held)   { r.buf[(r.head+r.n)%len(r.buf)] = h; r.n++ }
func (r *ring) pop()          { r.head, r.n = (r.head+1)%len(r.buf), r.n-1 }
func (r *ring) empty() bool   { return r.n == 0 }
func (r *ring) at(i int) held { return r.buf[(r.head+i)%len(r.buf)] }

// loop reads packets and releases them when due, until Close. The thread
// it runs on is never handed back to the runtime: it may have been made
// real-time, which no other goroutine should inherit. It allocates nothing
// once started, so that the delay line's process can run without garbage
// collection (whose stop-the-world, driven by threads of normal priority,
// would hold this one back on a busy machine).
func (d *delayLine) loop(started chan<- struct{}) {
	runtime.LockOSThread()
	defer close(d.done)
	attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: 10}
	if unix.SchedSetAttr(0, &attr, 0) == nil {
		d.c.realtime.Store(1)
	}
	close(started)
	start := time.Now()
	line := &ring{buf: make([]held, d.maxLen+1)} // the kernel queues at most maxLen
	buf := make([]byte, 1<<16)
	fds := []unix.PollFd{{Fd: int32(d.fd), Events: unix.POLLIN}, {Fd: int32(d.stopFd), Events: unix.POLLIN}}
	var ts unix.Timespec
	for {
		// Release what is due, then read what came, at most a batch at a
		// time, so that a burst of arrivals does not hold releases back.
		if err := d.release(line, int64(time.Since(start))); err != nil {
			d.err = err
			return
		}
		var timeout *unix.Timespec
		if !line.empty() {
			ts = unix.NsecToTimespec(max(line.front().due-int64(time.Since(start)), 0))
			timeout = &ts
		}
		if _, err := unix.Ppoll(fds, timeout, nil); err != nil && !errors.Is(err, unix.EINTR) {
			d.err = fmt.Errorf("ppoll: %w", err)
			return
		}
		if fds[1].Revents != 0 {
			return
		}
		now := int64(time.Since(start))
		for range 64 {
			n, err := unix.Read(d.fd, buf)
			if errors.Is(err, unix.EAGAIN) {
				break
			}
			if errors.Is(err, unix.ENOBUFS) {
				d.c.overflows.Add(1) // the kernel dropped what did not fit
				continue
			}
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				d.err = fmt.Errorf("read from nfqueue: %w", err)
				return
			}
			d.parse(line, buf[:n], now)
		}
	}
}

// parse adds the packets of the netlink messages in b, all read at now.
func (d *delayLine) parse(line *ring, b []byte, now int64) {
	for {
		typ, data, rest, ok := nextNetlinkMessage(b)
		if !ok {
			return
		}
		b = rest
		if typ != unix.NFNL_SUBSYS_QUEUE<<8|nfqnlMsgPacket || len(data) < 4 {
			continue
		}
		id, payload, ok := packetAttrs(data[4:]) // after the nfgenmsg
		if !ok {
			continue
		}
		d.count(payload)
		if line.full() { // cannot be: the kernel holds no more than maxLen
			d.release(line, line.front().due)
		}
		line.push(held{id: id, due: now + int64(d.delay)})
	}
}

// netlinkMessage is one message of a netlink datagram: its type and what
// follows its header.
type netlinkMessage struct {
	typ  uint16
	data []byte
}

// netlinkMessages splits a netlink datagram into its messages; a truncated
// message ends it.
func netlinkMessages(b []byte) []netlinkMessage {
	var ms []netlinkMessage
	for {
		typ, data, rest, ok := nextNetlinkMessage(b)
		if !ok {
			return ms
		}
		ms = append(ms, netlinkMessage{typ: typ, data: data})
		b = rest
	}
}

// nextNetlinkMessage splits the first message off a netlink datagram.
func nextNetlinkMessage(b []byte) (typ uint16, data, rest []byte, ok bool) {
	if len(b) < unix.NLMSG_HDRLEN {
		return 0, nil, nil, false
	}
	l := int(binary.NativeEndian.Uint32(b[0:4]))
	if l < unix.NLMSG_HDRLEN || l > len(b) {
		return 0, nil, nil, false
	}
	return binary.NativeEndian.Uint16(b[4:6]), b[unix.NLMSG_HDRLEN:l], b[min((l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1), len(b)):], true
}

// packetAttrs finds the packet id and the copied head of the packet in the
// attributes of a packet message.
func packetAttrs(b []byte) (id uint32, payload []byte, ok bool) {
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) & 0x3fff // without the nested and byte order flags
		if l < 4 || l > len(b) {
			break
		}
		switch typ {
		case nfqaPacketHdr:
			if l >= 8 {
				id, ok = binary.BigEndian.Uint32(b[4:8]), true
			}
		case nfqaPayload:
			payload = b[4:l]
		}
		b = b[min((l+3)&^3, len(b)):]
	}
	return id, payload, ok
}

// count adds a packet whose first bytes are head to the counters.
func (d *delayLine) count(head []byte) {
	d.c.packets.Add(1)
	p, ok := parseIPv4TCP(head)
	if !ok {
		return
	}
	d.c.bytes.Add(int64(p.total))
	if int64(p.total) > d.c.maxPacket.Load() {
		d.c.maxPacket.Store(int64(p.total)) // only the loop writes it
	}
	if p.tcp && p.src == d.down {
		d.c.payload.Add(int64(p.payload))
	}
}

// ipPacket is what the counters need of an IPv4 packet.
type ipPacket struct {
	src     netip.Addr
	total   int  // IP total length
	tcp     bool // a TCP segment whose header was in head
	payload int  // TCP payload length
}

// parseIPv4TCP reads the IPv4 header and, for TCP, the data offset from the
// first bytes of a packet.
func parseIPv4TCP(head []byte) (ipPacket, bool) {
	var p ipPacket
	if len(head) < 20 || head[0]>>4 != 4 {
		return p, false
	}
	ihl := int(head[0]&0x0f) * 4
	p.total = int(binary.BigEndian.Uint16(head[2:4]))
	p.src = netip.AddrFrom4([4]byte(head[12:16]))
	if head[9] == unix.IPPROTO_TCP && len(head) >= ihl+13 {
		doff := int(head[ihl+12]>>4) * 4
		p.tcp, p.payload = true, max(p.total-ihl-doff, 0)
	}
	return p, true
}

// release lets every packet due at now go on, with one batch verdict for
// the last of them (the kernel accepts every queued id up to it).
func (d *delayLine) release(line *ring, now int64) error {
	n := 0
	for n < line.n && line.at(n).due <= now {
		late := now - line.at(n).due
		d.c.lateNs.Add(late)
		if late > int64(lateMark) {
			d.c.lateOver.Add(1)
		}
		if late > d.c.lateMaxNs.Load() {
			d.c.lateMaxNs.Store(late)
		}
		n++
	}
	if n == 0 {
		return nil
	}
	last := line.at(n - 1).id
	for range n {
		line.pop()
	}
	binary.BigEndian.PutUint32(d.verdict[len(d.verdict)-4:], last)
	if _, err := unix.Write(d.fd, d.verdict); err != nil {
		return fmt.Errorf("verdict: %w", err)
	}
	return nil
}

// lateMark is how late a release counts as a stall of the link. A kernel
// without full preemption (PREEMPT_NONE, as many servers run) lets a busy
// CPU hold even a real-time thread back for a few scheduler ticks.
const lateMark = 5 * time.Millisecond

// delayStats is what the delay line counted since it started.
type delayStats struct {
	Packets   int64   `json:"packets"`
	Bytes     int64   `json:"bytes"`
	MaxPacket int64   `json:"max_packet_bytes"`
	LateMeanS float64 `json:"late_mean_s"` // release after the packet was due, mean
	LateMaxS  float64 `json:"late_max_s"`
	// LateOver5ms counts the packets released more than 5 ms late.
	LateOver5ms int64 `json:"late_over_5ms"`
	Overflows   int64 `json:"socket_overflows"`
	Realtime    bool  `json:"realtime"`
}

func (s delayStats) String() string {
	str := fmt.Sprintf("%d packets (largest %d bytes), released %.2f ms late on average, %.1f ms at most, %d (%.3f%%) more than %v late",
		s.Packets, s.MaxPacket, s.LateMeanS*1000, s.LateMaxS*1000, s.LateOver5ms, 100*float64(s.LateOver5ms)/float64(max(s.Packets, 1)), lateMark)
	if !s.Realtime {
		str += ", not at real-time priority"
	}
	return str
}

func (c *lineCounters) stats() delayStats {
	s := delayStats{Packets: c.packets.Load(), Bytes: c.bytes.Load(), MaxPacket: c.maxPacket.Load(),
		LateMaxS: time.Duration(c.lateMaxNs.Load()).Seconds(), LateOver5ms: c.lateOver.Load(), Overflows: c.overflows.Load(), Realtime: c.realtime.Load() == 1}
	if s.Packets > 0 {
		s.LateMeanS = time.Duration(c.lateNs.Load() / s.Packets).Seconds()
	}
	return s
}

// Err reports why the loop ended on its own (nil while it runs).
func (d *delayLine) Err() error {
	select {
	case <-d.done:
		return d.err
	default:
		return nil
	}
}

// Close stops the loop and closes the socket, which unbinds the queue: the
// packets it held are dropped, and so are the packets that come after (the
// rule has no bypass).
func (d *delayLine) Close() error {
	d.closeOnce.Do(func() {
		var one [8]byte
		binary.NativeEndian.PutUint64(one[:], 1)
		if _, err := unix.Write(d.stopFd, one[:]); err == nil {
			<-d.done
		}
		unix.Close(d.stopFd)
		unix.Close(d.fd)
	})
	return d.err
}
