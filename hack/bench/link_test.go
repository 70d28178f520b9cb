package main

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// TestLinkDelays checks the link's timing: the first answer on a new
// connection takes two round trips (the handshake, then the exchange), the
// next ones one, data arrives whole and in order, and the bytes delivered to
// the client are counted.
//
// A delay is never shorter than the link makes it (it sleeps until a
// piece is due, and a sleep does not end early), so the lower bounds are
// exact, provided that each is measured from a moment before the link's
// clock starts: the handshake's from before the dial, since the link
// counts it from its accept, which a busy machine may run before the
// dialing goroutine takes the time again. The upper bounds leave room for
// a busy machine (half a round trip) and still catch a delay made twice.
func TestLinkDelays(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	var d net.Dialer
	l, err := startLink(echo.Addr().String(), d.DialContext)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	const rtt = 400 * time.Millisecond
	const slack = rtt / 2
	l.SetRTT(rtt)

	start := time.Now()
	c, err := net.Dial("tcp", l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	// exchange sends msg and returns how long since t0 its echo took.
	exchange := func(t0 time.Time, msg string) time.Duration {
		t.Helper()
		if _, err := io.WriteString(c, msg+"\n"); err != nil {
			t.Fatal(err)
		}
		got, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if got != msg+"\n" {
			t.Fatalf("echo = %q, want %q", got, msg)
		}
		return time.Since(t0)
	}
	if took := exchange(start, "first"); took < 2*rtt || took > 2*rtt+slack {
		t.Errorf("first exchange on a new connection took %v from the dial, want %v to %v", took, 2*rtt, 2*rtt+slack)
	}
	if took := exchange(time.Now(), "second"); took < rtt || took > rtt+slack {
		t.Errorf("second exchange took %v, want %v to %v", took, rtt, rtt+slack)
	}
	big := strings.Repeat("0123456789", 100_000) // a megabyte, many reads
	if took := exchange(time.Now(), big); took < rtt {
		t.Errorf("1 MB exchange took %v, less than the RTT", took)
	}
	if want := int64(len("first\nsecond\n") + len(big) + 1); l.Delivered() != want {
		t.Errorf("Delivered() = %d, want %d", l.Delivered(), want)
	}
	t.Logf("three exchanges in %v", time.Since(start))
}

// tracked returns how many connections, client and server ends, the link
// has open.
func (l *link) tracked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.open)
}

// TestLinkClose checks that Close cuts open connections and returns.
func TestLinkClose(t *testing.T) {
	srv, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() {
		for {
			c, err := srv.Accept()
			if err != nil {
				return
			}
			defer c.Close() // idle: never answers
		}
	}()
	var d net.Dialer
	l, err := startLink(srv.Addr().String(), d.DialContext)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "hello")
	// Close must find the connection open, both ends of it.
	for deadline := time.Now().Add(time.Minute); l.tracked() < 2; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the link has %d ends of the connection open after a minute, want 2", l.tracked())
		}
	}
	done := make(chan struct{})
	go func() {
		l.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return with a connection open")
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("the client's connection is still open after Close")
	}
}
