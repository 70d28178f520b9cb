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
	const rtt = 100 * time.Millisecond
	l.SetRTT(rtt)

	start := time.Now()
	c, err := net.Dial("tcp", l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	exchange := func(msg string) time.Duration {
		t.Helper()
		t0 := time.Now()
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
	if took := exchange("first"); took < 2*rtt-5*time.Millisecond || took > 2*rtt+80*time.Millisecond {
		t.Errorf("first exchange on a new connection took %v, want about %v", took, 2*rtt)
	}
	if took := exchange("second"); took < rtt-5*time.Millisecond || took > rtt+80*time.Millisecond {
		t.Errorf("second exchange took %v, want about %v", took, rtt)
	}
	big := strings.Repeat("0123456789", 100_000) // a megabyte, many reads
	if took := exchange(big); took < rtt-5*time.Millisecond {
		t.Errorf("1 MB exchange took %v, less than the RTT", took)
	}
	if want := int64(len("first\nsecond\n") + len(big) + 1); l.Delivered() != want {
		t.Errorf("Delivered() = %d, want %d", l.Delivered(), want)
	}
	t.Logf("three exchanges in %v", time.Since(start))
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
	time.Sleep(50 * time.Millisecond)
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
