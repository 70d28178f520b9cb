package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// linkCheck is what the link measured like before the runs: the time to
// open a TCP connection (one round trip on a real link), the kernel's RTT
// estimate of a connection (TCP_INFO min_rtt), a request on a new
// connection (the handshake, then the request), and one bulk read of a
// blob on a new connection, showing slow start (the time to the first MiB)
// and the rate it reached (over the second half of the body). For the
// kernel link, also what its delay line and rate limiter did meanwhile.
type linkCheck struct {
	Mode          string  `json:"mode"` // -link
	ConnectS      stat    `json:"connect_s"`
	TCPMinRTTS    float64 `json:"tcp_min_rtt_s"`
	FirstRequestS float64 `json:"first_request_s"`

	Bytes      int64   `json:"bytes"`
	FirstByteS float64 `json:"first_byte_s"` // from the request on a new connection to the body's first byte
	FirstMiBS  float64 `json:"first_mib_s"`  // from the first byte to the first MiB
	Seconds    float64 `json:"seconds"`      // from the first to the last byte of the body
	BitsPerSec float64 `json:"bits_per_second"`
	// SteadyBitsPerSec is the rate of the second half of the body.
	SteadyBitsPerSec float64 `json:"steady_bits_per_second"`

	DelayLine *delayStats `json:"delay_line,omitempty"`
	Drops     *linkDrops  `json:"drops,omitempty"` // during the check
}

func (c linkCheck) String() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "link check (%s link): TCP connect %.1f ms (%.1f-%.1f, %d connections), TCP_INFO min_rtt %.1f ms, a request on a new connection %.1f ms\n",
		c.Mode, c.ConnectS.Median*1000, c.ConnectS.Min*1000, c.ConnectS.Max*1000, c.ConnectS.N, c.TCPMinRTTS*1000, c.FirstRequestS*1000)
	fmt.Fprintf(&sb, "  bulk read of %s on a new connection: first byte after %.0f ms, first MiB %.0f ms later, then %s on average, %s over the second half",
		mib(c.Bytes), c.FirstByteS*1000, c.FirstMiBS*1000, formatRate(int64(c.BitsPerSec)), formatRate(int64(c.SteadyBitsPerSec)))
	if c.Drops != nil {
		fmt.Fprintf(&sb, "\n  packets dropped meanwhile: %d by the rate limit's queue, %d by the delay line's", c.Drops.RateLimit, c.Drops.Queue)
	}
	if d := c.DelayLine; d != nil {
		fmt.Fprintf(&sb, "\n  delay line: %s", d)
	}
	return sb.String()
}

// checkLink measures the link to host, reading the largest layer of ref
// (up to 32 MiB of it); k is the kernel link, nil for the proxy.
func checkLink(ctx context.Context, mode, host, ref string, k *kernelLink) (linkCheck, error) {
	c := linkCheck{Mode: mode}
	var drops0 linkDrops
	if k != nil {
		var err error
		if drops0, err = k.Drops(); err != nil {
			return c, err
		}
	}
	if err := c.roundTrips(ctx, host); err != nil {
		return c, err
	}
	if err := c.bulk(ctx, host, ref); err != nil {
		return c, err
	}
	if k != nil {
		drops, err := k.Drops()
		if err != nil {
			return c, err
		}
		drops.Queue -= drops0.Queue
		drops.RateLimit -= drops0.RateLimit
		st := k.delay.stats()
		c.Drops, c.DelayLine = &drops, &st
	}
	return c, nil
}

// roundTrips measures connects, the min_rtt of a connection that made a
// few requests, and a request on a new connection.
func (c *linkCheck) roundTrips(ctx context.Context, host string) error {
	var d net.Dialer
	var connects []float64
	for range 5 {
		t0 := time.Now()
		conn, err := d.DialContext(ctx, "tcp", host)
		if err != nil {
			return err
		}
		connects = append(connects, time.Since(t0).Seconds())
		conn.Close()
	}
	c.ConnectS = summarize(connects)

	var conn net.Conn
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var err error
		conn, err = d.DialContext(ctx, network, addr)
		return conn, err
	}}}
	for range 5 {
		if err := get(ctx, hc, "http://"+host+"/v2/", "", nil); err != nil {
			return err
		}
	}
	info, err := tcpInfo(conn)
	hc.CloseIdleConnections()
	if err != nil {
		return err
	}
	c.TCPMinRTTS = (time.Duration(info.Min_rtt) * time.Microsecond).Seconds()

	hc = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	t0 := time.Now()
	if err := get(ctx, hc, "http://"+host+"/v2/", "", nil); err != nil {
		return err
	}
	c.FirstRequestS = time.Since(t0).Seconds()
	return nil
}

// bulk reads up to 32 MiB of the largest layer of ref on a new connection.
func (c *linkCheck) bulk(ctx context.Context, host, ref string) error {
	r, err := name.ParseReference(ref)
	if err != nil {
		return err
	}
	img, err := remote.Image(r, remote.WithContext(ctx))
	if err != nil {
		return err
	}
	m, err := img.Manifest()
	if err != nil {
		return err
	}
	largest := m.Layers[0]
	for _, l := range m.Layers {
		if l.Size > largest.Size {
			largest = l
		}
	}
	n := min(largest.Size, 32<<20)
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	var samples []sample
	url := fmt.Sprintf("http://%s/v2/%s/blobs/%s", host, r.Context().RepositoryStr(), largest.Digest)
	t0 := time.Now()
	err = get(ctx, hc, url, "bytes=0-"+strconv.FormatInt(n-1, 10), func(body io.Reader) error {
		buf := make([]byte, 64<<10)
		var total int64
		for {
			k, err := body.Read(buf)
			if k > 0 {
				total += int64(k)
				samples = append(samples, sample{time.Since(t0), total})
			}
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
		}
	})
	if err != nil {
		return err
	}
	b := bulkFigures(samples)
	if b.bytes < 2<<20 {
		return fmt.Errorf("bulk read of %s: only %s", largest.Digest, mib(b.bytes))
	}
	c.Bytes, c.FirstByteS, c.FirstMiBS, c.Seconds = b.bytes, b.firstByte.Seconds(), b.firstMiB.Seconds(), b.seconds.Seconds()
	c.BitsPerSec, c.SteadyBitsPerSec = b.bitsPerSec, b.steadyBitsPerSec
	return nil
}

// sample is how many bytes of a body had come at a time.
type sample struct {
	at    time.Duration
	total int64
}

// bulk is what a body's samples show.
type bulkResult struct {
	bytes            int64
	firstByte        time.Duration // at the first sample
	firstMiB         time.Duration // from the first byte to the first MiB
	seconds          time.Duration // from the first to the last byte
	bitsPerSec       float64       // over all the bytes after the first sample
	steadyBitsPerSec float64       // over the second half of the bytes
}

func bulkFigures(s []sample) bulkResult {
	var r bulkResult
	if len(s) < 2 {
		return r
	}
	first, last := s[0], s[len(s)-1]
	r.bytes, r.firstByte, r.seconds = last.total, first.at, last.at-first.at
	if r.seconds > 0 {
		r.bitsPerSec = float64(8*(last.total-first.total)) / r.seconds.Seconds()
	}
	var half sample
	for _, x := range s {
		if r.firstMiB == 0 && x.total >= 1<<20 {
			r.firstMiB = x.at - first.at
		}
		if half.total == 0 && x.total >= last.total/2 {
			half = x
		}
	}
	if d := last.at - half.at; d > 0 {
		r.steadyBitsPerSec = float64(8*(last.total-half.total)) / d.Seconds()
	}
	return r
}

// get GETs url (with a Range header when rng is set) and hands the body
// to read, or discards it.
func get(ctx context.Context, hc *http.Client, url, rng string, read func(io.Reader) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if read == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	return read(resp.Body)
}

// parseRate parses "200mbit", "1gbit", "500kbit" or a plain number of
// bits per second.
func parseRate(s string) (int64, error) {
	v := strings.ToLower(strings.TrimSpace(s))
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"kbit", 1e3}, {"mbit", 1e6}, {"gbit", 1e9}, {"bit", 1}} {
		if strings.HasSuffix(v, u.suffix) {
			v, mult = strings.TrimSuffix(v, u.suffix), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f <= 0 {
		return 0, fmt.Errorf("-rate %q: want a positive number with kbit, mbit or gbit", s)
	}
	return int64(f * float64(mult)), nil
}

func formatRate(bps int64) string {
	switch {
	case bps >= 1e9:
		return fmt.Sprintf("%.3g Gbit/s", float64(bps)/1e9)
	case bps >= 1e6:
		return fmt.Sprintf("%.0f Mbit/s", float64(bps)/1e6)
	default:
		return fmt.Sprintf("%.0f kbit/s", float64(bps)/1e3)
	}
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// tcpInfo returns the kernel's TCP_INFO of a TCP connection.
func tcpInfo(c net.Conn) (*unix.TCPInfo, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("not a socket: %T", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var info *unix.TCPInfo
	var infoErr error
	if err := raw.Control(func(fd uintptr) {
		info, infoErr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		return nil, err
	}
	return info, infoErr
}
