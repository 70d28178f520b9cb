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

// linkCheck is what the link measured like before the runs: a request on a
// new connection (two round trips: the handshake, then the request) and
// the throughput of a large blob read.
type linkCheck struct {
	FirstRequest float64 `json:"first_request_s"`
	Bytes        int64   `json:"bytes"`
	Seconds      float64 `json:"seconds"` // from the first to the last byte of the body
	BitsPerSec   float64 `json:"bits_per_second"`
}

func (c linkCheck) String() string {
	return fmt.Sprintf("a request on a new connection took %.1f ms; %s of a blob came at %s",
		c.FirstRequest*1000, mib(c.Bytes), formatRate(int64(c.BitsPerSec)))
}

// checkLink measures the link at host with the largest layer of ref.
func checkLink(ctx context.Context, host, ref string) (linkCheck, error) {
	var c linkCheck
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	t0 := time.Now()
	if err := get(ctx, hc, "http://"+host+"/v2/", "", nil); err != nil {
		return c, err
	}
	c.FirstRequest = time.Since(t0).Seconds()

	r, err := name.ParseReference(ref)
	if err != nil {
		return c, err
	}
	img, err := remote.Image(r, remote.WithContext(ctx))
	if err != nil {
		return c, err
	}
	m, err := img.Manifest()
	if err != nil {
		return c, err
	}
	largest := m.Layers[0]
	for _, l := range m.Layers {
		if l.Size > largest.Size {
			largest = l
		}
	}
	n := min(largest.Size, 32<<20)
	var first time.Time
	url := fmt.Sprintf("http://%s/v2/%s/blobs/%s", host, r.Context().RepositoryStr(), largest.Digest)
	err = get(ctx, hc, url, "bytes=0-"+strconv.FormatInt(n-1, 10), func(body io.Reader) error {
		buf := make([]byte, 64<<10)
		for {
			k, err := body.Read(buf)
			if k > 0 && first.IsZero() {
				first = time.Now()
			}
			c.Bytes += int64(k)
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
		}
	})
	if err != nil {
		return c, err
	}
	c.Seconds = time.Since(first).Seconds()
	c.BitsPerSec = float64(c.Bytes*8) / c.Seconds
	return c, nil
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
