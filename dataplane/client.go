package dataplane

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/containerd/errdefs"
)

// maxIdleConns bounds the connections a Client keeps open for reuse; more
// may be open while more calls are in flight.
const maxIdleConns = 16

// Client calls one data plane. It is safe for concurrent use; Close
// releases its idle connections.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a Client of the data plane listening on the unix
// socket at path. It does not connect until the first call.
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		MaxIdleConns:        maxIdleConns,
		MaxIdleConnsPerHost: maxIdleConns,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
	}
	return &Client{socket: path, hc: &http.Client{Transport: tr}}
}

// Socket is the path of the socket the Client calls.
func (c *Client) Socket() string { return c.socket }

// Close closes the Client's idle connections. Calls in flight go on.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// Info asks the data plane who it is.
func (c *Client) Info(ctx context.Context) (Info, error) {
	var info Info
	err := c.call(ctx, http.MethodGet, PathInfo, nil, &info)
	return info, err
}

// Runtime asks the data plane what its Go runtime holds; with gc, it
// collects garbage first, so that HeapAlloc is the live heap. A data plane
// of a build that does not know the call answers with an error of class
// NotImplemented.
func (c *Client) Runtime(ctx context.Context, gc bool) (Runtime, error) {
	path := PathRuntime
	if gc {
		path += "?gc=1"
	}
	var rt Runtime
	err := c.call(ctx, http.MethodGet, path, nil, &rt)
	return rt, err
}

// Mounts lists the layers the data plane serves.
func (c *Client) Mounts(ctx context.Context) ([]Mount, error) {
	var l MountList
	err := c.call(ctx, http.MethodGet, PathMounts, nil, &l)
	return l.Mounts, err
}

// Mount asks the data plane to mount the layer labels describe at
// mountpoint; the error is FileSystem.Mount's. It returns the layer's
// verification state, or nil if the data plane does not verify layers.
func (c *Client) Mount(ctx context.Context, mountpoint string, labels map[string]string) (*Verification, error) {
	var a MountAnswer
	err := c.call(ctx, http.MethodPost, PathMount, MountRequest{Mountpoint: mountpoint, Labels: labels}, &a)
	return a.Verification, err
}

// Check asks whether the layer at mountpoint is still served.
func (c *Client) Check(ctx context.Context, mountpoint string, labels map[string]string) error {
	return c.call(ctx, http.MethodPost, PathCheck, MountRequest{Mountpoint: mountpoint, Labels: labels}, nil)
}

// Unmount asks the data plane to unmount mountpoint.
func (c *Client) Unmount(ctx context.Context, mountpoint string) error {
	return c.call(ctx, http.MethodPost, PathUnmount, UnmountRequest{Mountpoint: mountpoint}, nil)
}

// Shutdown asks the data plane to stop; see ShutdownRequest. It returns
// once the data plane has answered, before it has exited.
func (c *Client) Shutdown(ctx context.Context, unmount bool) error {
	return c.call(ctx, http.MethodPost, PathShutdown, ShutdownRequest{Unmount: unmount}, nil)
}

// Verifications returns the verification state of every layer the data
// plane serves and its generation, once the generation is past since, or,
// after the data plane's bound (MaxPollWait) with nothing new, no state
// and since as the generation: the caller then asks again. Cancelling ctx
// ends the call. A data plane that does not verify layers (or predates
// the call) answers with an error of class NotImplemented.
func (c *Client) Verifications(ctx context.Context, since uint64) ([]Verification, uint64, error) {
	var l VerificationList
	q := url.Values{"since": {strconv.FormatUint(since, 10)}}
	if err := c.call(ctx, http.MethodGet, PathVerifications+"?"+q.Encode(), nil, &l); err != nil {
		return nil, since, err
	}
	return l.Verifications, l.Generation, nil
}

// SetCredentials gives the data plane credentials for its reads of a
// repository (see Credentials); a data plane whose FileSystem takes none
// answers with an error of class NotImplemented.
func (c *Client) SetCredentials(ctx context.Context, cr Credentials) error {
	return c.call(ctx, http.MethodPost, PathCredentials, cr, nil)
}

// call sends a request with body in as JSON (if not nil) and decodes a
// successful answer into out (if not nil).
func (c *Client) call(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("data plane %s: %s: %w", c.socket, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://dataplane"+path, body)
	if err != nil {
		return fmt.Errorf("data plane %s: %s: %w", c.socket, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("data plane %s: %s: %w", c.socket, path, ctx.Err())
		}
		return fmt.Errorf("data plane %s: %s: %v: %w", c.socket, path, err, errdefs.ErrUnavailable)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return decodeAnswerError(c.socket, path, resp)
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64*maxBody)).Decode(out); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("data plane %s: %s: %w", c.socket, path, ctx.Err())
		}
		return fmt.Errorf("data plane %s: %s: answer: %v: %w", c.socket, path, err, errdefs.ErrUnavailable)
	}
	return nil
}

// decodeAnswerError returns the error a failed call's answer carries.
func decodeAnswerError(socket, path string, resp *http.Response) error {
	var e Error
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxBody)).Decode(&e); err != nil {
		return fmt.Errorf("data plane %s: %s: status %s and an unreadable error: %v: %w", socket, path, resp.Status, err, errdefs.ErrUnknown)
	}
	return decodeError(e)
}
