package dataplane

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

// verifyFS is a testFS that verifies: its state moves to a new generation
// when the test says so, and each Verifications call that waits says so
// on waiting and its ctx error on ended.
type verifyFS struct {
	*testFS

	mu      sync.Mutex
	gen     uint64
	vs      []Verification
	changed chan struct{}
	waiting chan uint64 // gets since when a call starts waiting
	ended   chan error  // gets the ctx error of a call that stopped waiting
}

func newVerifyFS() *verifyFS {
	return &verifyFS{testFS: newTestFS(), gen: 1, changed: make(chan struct{}), waiting: make(chan uint64, 8), ended: make(chan error, 8)}
}

func (f *verifyFS) set(vs ...Verification) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gen++
	f.vs = vs
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *verifyFS) Verifications(ctx context.Context, since uint64) ([]Verification, uint64, error) {
	for {
		f.mu.Lock()
		gen, vs, changed := f.gen, f.vs, f.changed
		f.mu.Unlock()
		if gen > since {
			return vs, gen, nil
		}
		f.waiting <- since
		select {
		case <-changed:
		case <-ctx.Done():
			f.ended <- ctx.Err()
			return nil, since, ctx.Err()
		}
	}
}

// A daemon learns of each verdict of a data plane as it comes: the call
// answers at once with what is known, then, asked with the generation it
// got, when something changes.
func TestVerificationsLongPoll(t *testing.T) {
	fsys := newVerifyFS()
	c, _ := serve(t, fsys)
	ctx := t.Context()
	vs, gen, err := c.Verifications(ctx, 0)
	if err != nil || gen != 1 || len(vs) != 0 {
		t.Fatalf("first Verifications = %v, %d, %v; want nothing at generation 1", vs, gen, err)
	}
	type answer struct {
		vs  []Verification
		gen uint64
		err error
	}
	got := make(chan answer, 1)
	go func() {
		vs, gen, err := c.Verifications(ctx, gen)
		got <- answer{vs, gen, err}
	}()
	if since := <-fsys.waiting; since != 1 {
		t.Fatalf("data plane waits for a generation past %d, want 1", since)
	}
	decided := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	want := Verification{
		Mountpoint: "/mp/a", Layer: "sha256:aa", ChainID: "sha256:cc", State: VerificationFailed,
		Reason: "DiffID differs", DiffID: "sha256:dd", Mounted: decided.Add(-time.Minute), Decided: decided,
	}
	fsys.set(want)
	a := <-got
	if a.err != nil || a.gen != 2 || len(a.vs) != 1 || a.vs[0] != want {
		t.Errorf("Verifications after a verdict = %+v, %d, %v; want [%+v] at generation 2", a.vs, a.gen, a.err, want)
	}
}

// A Mount on a data plane that verifies answers with the mounted layer's
// state, so that a layer verified before it was mounted (or by the Mount)
// is known as such when the Mount returns; one that does not verify says
// nothing.
func TestMountAnswersVerification(t *testing.T) {
	fsys := newVerifyFS()
	want := Verification{Mountpoint: "/mp/a", Layer: "sha256:aa", State: VerificationVerified, DiffID: "sha256:dd"}
	fsys.set(want, Verification{Mountpoint: "/mp/other", Layer: "sha256:bb", State: VerificationPending})
	c, _ := serve(t, fsys)
	v, err := c.Mount(t.Context(), "/mp/a", nil)
	if err != nil || v == nil || *v != want {
		t.Errorf("Mount = %+v, %v; want %+v", v, err, want)
	}
	if v, err := c.Mount(t.Context(), "/mp/unlisted", nil); err != nil || v != nil {
		t.Errorf("Mount of a layer the FileSystem does not list = %+v, %v; want no state", v, err)
	}
	c, _ = serve(t, newTestFS())
	if v, err := c.Mount(t.Context(), "/mp/a", nil); err != nil || v != nil {
		t.Errorf("Mount on a data plane that does not verify = %+v, %v; want no state", v, err)
	}
}

// A long poll ends: after the data plane's bound with nothing new (the
// caller asks again), when its caller gives up, and when the data plane
// stops, which does not wait for it.
func TestVerificationsEnds(t *testing.T) {
	fsys := newVerifyFS()
	c, s, _ := serveServer(t, fsys)
	ctx := t.Context()

	s.setPollWait(10 * time.Millisecond)
	vs, gen, err := c.Verifications(ctx, 1)
	if err != nil || gen != 1 || vs != nil {
		t.Errorf("Verifications with nothing new = %v, %d, %v; want nothing at generation 1", vs, gen, err)
	}
	<-fsys.waiting
	if err := <-fsys.ended; !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("the data plane's wait ended with %v, want its bound", err)
	}

	s.setPollWait(MaxPollWait)
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, _, err := c.Verifications(cctx, 1)
		done <- err
	}()
	<-fsys.waiting
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled Verifications = %v, want context canceled", err)
	}
	if err := <-fsys.ended; !errors.Is(err, context.Canceled) {
		t.Errorf("the data plane's wait ended with %v, want cancelled", err)
	}

	go func() {
		_, _, err := c.Verifications(ctx, 1)
		done <- err
	}()
	<-fsys.waiting
	sctx, scancel := context.WithTimeout(ctx, MaxPollWait/2)
	defer scancel()
	if err := s.Shutdown(sctx); err != nil {
		t.Errorf("Shutdown with a long poll in flight: %v", err)
	}
	if err := <-done; !errdefs.IsUnavailable(err) {
		t.Errorf("Verifications cut off by Shutdown = %v, want unavailable", err)
	}
}

// A data plane whose FileSystem does not verify (or an older one) says so
// with a class the daemon can tell from a failure.
func TestVerificationsNotImplemented(t *testing.T) {
	c, _ := serve(t, newTestFS())
	if _, _, err := c.Verifications(t.Context(), 0); !errdefs.IsNotImplemented(err) {
		t.Errorf("Verifications of a FileSystem without them = %v, want not implemented", err)
	}
	fsys := newVerifyFS()
	c, _ = serve(t, fsys)
	err := c.call(t.Context(), "GET", PathVerifications+"?since=x", nil, nil)
	if !errdefs.IsInvalidArgument(err) {
		t.Errorf("since=x: %v, want invalid argument", err)
	}
}

// setPollWait changes the bound of the long polls that start from now on.
func (s *Server) setPollWait(d time.Duration) { s.pollWait.Store(int64(d)) }
