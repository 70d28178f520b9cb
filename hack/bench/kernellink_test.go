package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMain runs the test binary as a delay line process when the kernel
// link starts one (it runs os.Executable()).
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == delayLineArg {
		os.Exit(runDelayLine(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// testLink makes a kernel link between a client namespace and a server
// namespace of the test's own, shaped to rtt and rate, and a server in the
// server namespace that answers each line with a line and "bulk N\n" with N
// bytes. Everything is removed when the test ends.
func testLink(t *testing.T, rtt time.Duration, rate int64) (*kernelLink, net.Addr) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces")
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Fatalf("iptables: %v (hack/install-deps.sh installs it)", err)
	}
	s := newScope(t.Name(), testLog{t})
	t.Cleanup(func() {
		if s.close() {
			t.Error("teardown of the link failed")
		}
	})
	var k *kernelLink
	var ln net.Listener
	err := s.do(func() error {
		prefix := "lptest-" + strconv.Itoa(os.Getpid())
		client := newNetns(s, prefix+"-client")
		var err error
		if k, err = newKernelLink(s, prefix, client); err != nil {
			return err
		}
		if ln, err = k.ServerNS().listen("tcp", net.JoinHostPort(k.RegistryIP().String(), "0")); err != nil {
			return err
		}
		s.Cleanup(func() { ln.Close() })
		return k.Shape(rtt, rate)
	})
	if err != nil {
		t.Fatal(err)
	}
	go serveTestLink(ln)
	return k, ln.Addr()
}

func serveTestLink(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 64<<10)
			for {
				n, err := c.Read(buf)
				if err != nil {
					return
				}
				var size int
				if _, err := fmt.Sscanf(string(buf[:n]), "bulk %d", &size); err == nil {
					c.Write(bytes.Repeat([]byte{'x'}, size))
					continue
				}
				c.Write(buf[:n])
			}
		}()
	}
}

// TestKernelLinkDelay checks that a TCP connection over the kernel link
// takes one round trip to connect and that the kernel's own RTT estimate
// of the connection is the link's, and that a bulk transfer is delivered
// whole, at no more than the link's rate, in packets of the veth's MTU,
// with nothing dropped by the delay line.
func TestKernelLinkDelay(t *testing.T) {
	const rtt = 60 * time.Millisecond
	const rate = 100e6
	k, addr := testLink(t, rtt, rate)

	t0 := time.Now()
	c, err := k.client.dial(t.Context(), "tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	connect := time.Since(t0)
	if connect < rtt*95/100 {
		t.Errorf("connect took %v, less than the link's round trip %v", connect, rtt)
	}
	for range 5 { // small exchanges, each one round trip
		if _, err := io.WriteString(c, "ping\n"); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 5)); err != nil {
			t.Fatal(err)
		}
	}
	info, err := tcpInfo(c)
	if err != nil {
		t.Fatal(err)
	}
	minRTT := time.Duration(info.Min_rtt) * time.Microsecond
	// The lower bound is the link's; above it only the machine's load
	// (the test leaves generous room for a busy machine).
	if minRTT < rtt*95/100 || minRTT > rtt+100*time.Millisecond {
		t.Errorf("TCP_INFO min_rtt = %v, want about %v", minRTT, rtt)
	}

	const size = 4 << 20
	before := k.Delivered()
	t0 = time.Now()
	if _, err := io.WriteString(c, "bulk "+strconv.Itoa(size)+"\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	took := time.Since(t0)
	bps := float64(size*8) / took.Seconds()
	t.Logf("connect %v, min_rtt %v, %d MiB in %v (%.0f Mbit/s)", connect, minRTT, size>>20, took, bps/1e6)
	if bps > rate*1.1 {
		t.Errorf("bulk transfer at %.0f Mbit/s, above the link's %.0f", bps/1e6, float64(rate)/1e6)
	}
	// Far below the rate, not just below it: a busy machine's reader and
	// writer are slow too, a link shaped in the wrong unit is orders of
	// magnitude slower.
	if bps < rate/16 {
		t.Errorf("bulk transfer at %.0f Mbit/s, far below the link's %.0f (is the sender throttled?)", bps/1e6, float64(rate)/1e6)
	}
	if got := k.Delivered() - before; got < size {
		t.Errorf("the delay line counted %d payload bytes to the client, want at least %d", got, size)
	}
	st := k.delay.stats()
	if st.MaxPacket > 1500 {
		t.Errorf("the delay line saw a packet of %d bytes, more than the MTU", st.MaxPacket)
	}
	drops, err := k.Drops()
	if err != nil {
		t.Fatal(err)
	}
	if drops.Queue != 0 {
		t.Errorf("the delay line's queue dropped %d packets", drops.Queue)
	}
	t.Logf("delay line: %+v; drops %+v", st, drops)
}

func TestParseQueueDrops(t *testing.T) {
	const proc = "    0  12345     3 2    80     7     2 91234 1\n    1  4     0 2    80     0     0 0 1\n"
	if got, err := parseQueueDrops(proc, 0); err != nil || got != 9 {
		t.Errorf("parseQueueDrops(queue 0) = %d, %v; want 9", got, err)
	}
	if got, err := parseQueueDrops(proc, 1); err != nil || got != 0 {
		t.Errorf("parseQueueDrops(queue 1) = %d, %v; want 0", got, err)
	}
	if _, err := parseQueueDrops(proc, 2); err == nil {
		t.Error("parseQueueDrops found a queue that is not there")
	}
}

func TestParseTCDropped(t *testing.T) {
	const out = `qdisc tbf 8001: root refcnt 2 rate 200Mbit burst 25000b lat 4.0ms
 Sent 123456 bytes 100 pkt (dropped 12, overlimits 40 requeues 0)
 backlog 0b 0p requeues 0
`
	if got, err := parseTCDropped(out); err != nil || got != 12 {
		t.Errorf("parseTCDropped = %d, %v; want 12", got, err)
	}
	if _, err := parseTCDropped("qdisc noqueue 0: root"); err == nil {
		t.Error("parseTCDropped without a count did not fail")
	}
}

// TestPacketParsing checks what the delay line reads of a queued packet:
// its id, and from the copied headers the length and the TCP payload.
func TestPacketParsing(t *testing.T) {
	ip := make([]byte, 20+32)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], 1500)
	ip[9] = 6 // TCP
	copy(ip[12:16], []byte{10, 213, 0, 6})
	ip[20+12] = 8 << 4 // data offset: 32 bytes (timestamps)
	var hdr [8]byte
	binary.BigEndian.PutUint32(hdr[0:4], 4242)
	attrs := append(attr(nfqaPacketHdr, hdr[:]), attr(nfqaPayload, ip)...)
	msg := nfqMessage(nfqnlMsgPacket, 0, 0, attrs)
	ms := netlinkMessages(append(msg, msg...))
	if len(ms) != 2 {
		t.Fatalf("netlinkMessages found %d messages, want 2", len(ms))
	}
	id, head, ok := packetAttrs(ms[0].data[4:])
	if !ok || id != 4242 || !bytes.Equal(head, ip) {
		t.Fatalf("packetAttrs = %d, %d bytes, %v; want 4242 and the packet", id, len(head), ok)
	}
	p, ok := parseIPv4TCP(head)
	if !ok || !p.tcp || p.total != 1500 || p.payload != 1500-20-32 || p.src != netip.MustParseAddr("10.213.0.6") {
		t.Errorf("parseIPv4TCP = %+v, %v", p, ok)
	}
}

// testLog writes to the test's log.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
