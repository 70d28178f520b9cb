package main

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// link is a TCP proxy on 127.0.0.1 that plays a network path with a round
// trip time: a connection's first bytes leave one RTT after it was accepted
// (the handshake), and every piece of data is delivered half an RTT after
// it was read, in order, in both directions. Bandwidth is not its business
// (the token bucket in the registry's namespace limits it); it counts the
// bytes it delivers to clients.
type link struct {
	ln       net.Listener
	upstream string
	dial     func(ctx context.Context, network, addr string) (net.Conn, error)
	rtt      atomic.Int64 // time.Duration

	down  atomic.Int64 // bytes delivered to clients
	conns atomic.Int64 // connections accepted

	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex
	open   map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// linkBuffer is the size of one read; linkQueue bounds the reads in flight
// per direction of a connection (8 MiB, far more than the bandwidth-delay
// product of any link the benchmark plays).
const (
	linkBuffer = 32 << 10
	linkQueue  = 256
)

// startLink listens on 127.0.0.1 and forwards every connection to
// upstream, dialed with dial. Close stops it.
func startLink(upstream string, dial func(ctx context.Context, network, addr string) (net.Conn, error)) (*link, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &link{ln: ln, upstream: upstream, dial: dial, ctx: ctx, cancel: cancel, open: map[net.Conn]struct{}{}}
	l.wg.Add(1)
	go l.accept()
	return l, nil
}

// Addr is "127.0.0.1:<port>".
func (l *link) Addr() string { return l.ln.Addr().String() }

// SetRTT sets the round trip time of connections accepted from now on.
func (l *link) SetRTT(d time.Duration) { l.rtt.Store(int64(d)) }

// Delivered returns the bytes delivered to clients so far.
func (l *link) Delivered() int64 { return l.down.Load() }

// Close stops accepting, cuts every connection and waits for its goroutines.
func (l *link) Close() error {
	err := l.ln.Close()
	l.cancel()
	l.mu.Lock()
	for c := range l.open {
		c.Close()
	}
	l.mu.Unlock()
	l.wg.Wait()
	return err
}

func (l *link) accept() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.conns.Add(1)
		l.wg.Add(1)
		go l.serve(c)
	}
}

// track records c as open (false once the link is closing).
func (l *link) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ctx.Err() != nil {
		return false
	}
	l.open[c] = struct{}{}
	return true
}

func (l *link) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.open, c)
	l.mu.Unlock()
	c.Close()
}

func (l *link) serve(client net.Conn) {
	defer l.wg.Done()
	accepted := time.Now()
	rtt := time.Duration(l.rtt.Load())
	if !l.track(client) {
		client.Close()
		return
	}
	defer l.untrack(client)
	server, err := l.dial(l.ctx, "tcp", l.upstream)
	if err != nil {
		return
	}
	if !l.track(server) {
		server.Close()
		return
	}
	defer l.untrack(server)
	established := accepted.Add(rtt)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		l.pipe(server, client, established, rtt/2, nil)
	}()
	l.pipe(client, server, established, rtt/2, &l.down)
	wg.Wait()
}

// piece is data read from one side and due on the other at due; nil data
// is the end of the stream.
type piece struct {
	data []byte
	due  time.Time
	err  error
}

// pipe copies src to dst, delivering what is read at t at
// max(t, established)+delay. At the end of src it half-closes dst; on an
// error it closes both, which ends the other direction too.
func (l *link) pipe(dst, src net.Conn, established time.Time, delay time.Duration, count *atomic.Int64) {
	q := make(chan piece, linkQueue)
	go func() {
		defer close(q)
		for {
			buf := make([]byte, linkBuffer)
			n, err := src.Read(buf)
			t := time.Now()
			if t.Before(established) {
				t = established
			}
			if n > 0 {
				q <- piece{data: buf[:n], due: t.Add(delay)}
			}
			if err != nil {
				q <- piece{due: t.Add(delay), err: err}
				return
			}
		}
	}()
	for p := range q {
		if d := time.Until(p.due); d > 0 {
			time.Sleep(d)
		}
		if p.data == nil {
			if errors.Is(p.err, io.EOF) {
				if tc, ok := dst.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
					continue // drain q; the reader has ended
				}
			}
			dst.Close()
			src.Close()
			continue
		}
		n, err := dst.Write(p.data)
		if count != nil {
			count.Add(int64(n))
		}
		if err != nil {
			dst.Close()
			src.Close()
		}
	}
}
