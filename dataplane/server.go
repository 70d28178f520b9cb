package dataplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// maxBody bounds a request body: labels are a few KiB.
const maxBody = 1 << 20

// FileSystem is what a data plane serves: the snapshotter's FileSystem.
// fs.FileSystem is one.
type FileSystem interface {
	Mount(ctx context.Context, mountpoint string, labels map[string]string) error
	Check(ctx context.Context, mountpoint string, labels map[string]string) error
	Unmount(ctx context.Context, mountpoint string) error
}

// Verifier is what a FileSystem has if it verifies the layers it serves
// (fs.FileSystem does, through cmd/lazypulld's adapter): Verifications
// returns the state of every layer it serves and a generation number once
// the generation is past since, and waits for that, or for ctx, otherwise;
// the first generation is past 0, so that since 0 answers at once. The
// Server answers /v1/verifications with it, and a Mount with the mounted
// layer's state; without it, /v1/verifications with "not implemented".
type Verifier interface {
	Verifications(ctx context.Context, since uint64) ([]Verification, uint64, error)
}

// Server serves a FileSystem over the protocol. Make it with NewServer.
type Server struct {
	fs      FileSystem
	info    Info
	stop    func()
	srv     *http.Server
	metrics http.Handler // see WithMetrics

	// polls ends the long polls of /v1/verifications, which Shutdown
	// would otherwise wait for; pollWait bounds each (MaxPollWait).
	polls    context.Context
	endPolls context.CancelFunc
	pollWait atomic.Int64 // a time.Duration

	mu       sync.Mutex
	mounts   map[string]map[string]string // served, by mountpoint
	busy     map[string]bool              // mountpoints with a call in flight that changes them
	stopping bool
}

// NewServer returns a Server of fsys that answers Info with info. stop is
// called once, after the answer to the first Shutdown call that was not
// refused; it must not block: the data plane should then stop serving
// (Server.Shutdown) and exit. A Shutdown that unmounts closes fsys if it is
// an io.Closer (whose Close must unmount every layer: fs.FileSystem's keeps
// what it keeps for layers that are only stopped, not removed), and calls
// fsys.Unmount for each layer otherwise. The Server holds nothing that
// needs closing besides what Serve holds.
func NewServer(fsys FileSystem, info Info, stop func(), opts ...ServerOption) *Server {
	s := &Server{fs: fsys, info: info, stop: stop, mounts: map[string]map[string]string{}, busy: map[string]bool{}}
	for _, o := range opts {
		o(s)
	}
	s.pollWait.Store(int64(MaxPollWait))
	s.polls, s.endPolls = context.WithCancel(context.Background())
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+PathInfo, s.handleInfo)
	mux.HandleFunc("GET "+PathMounts, s.handleMounts)
	mux.HandleFunc("POST "+PathMount, s.handleMount)
	mux.HandleFunc("POST "+PathCheck, s.handleCheck)
	mux.HandleFunc("POST "+PathUnmount, s.handleUnmount)
	mux.HandleFunc("POST "+PathShutdown, s.handleShutdown)
	mux.HandleFunc("GET "+PathVerifications, s.handleVerifications)
	mux.HandleFunc("POST "+PathCredentials, s.handleCredentials)
	mux.HandleFunc("GET "+PathRuntime, handleRuntime)
	mux.HandleFunc("GET "+PathStatus, s.handleStatus)
	mux.HandleFunc("GET "+PathMetrics, s.handleMetrics)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, fmt.Errorf("%s %s: %w", r.Method, r.URL.Path, errdefs.ErrNotImplemented))
	})
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return s
}

// Serve serves calls on l until Shutdown; it then returns
// http.ErrServerClosed.
func (s *Server) Serve(l net.Listener) error { return s.srv.Serve(l) }

// Shutdown stops accepting calls, ends the long polls (whose callers get
// an error of class Unavailable) and waits for the other calls in flight,
// until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.endPolls()
	return s.srv.Shutdown(ctx)
}

// Mounts returns what the Server has mounted and not unmounted, in
// mountpoint order.
func (s *Server) Mounts() []Mount {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Mount, 0, len(s.mounts))
	for _, mp := range slices.Sorted(maps.Keys(s.mounts)) {
		out = append(out, Mount{Mountpoint: mp, Labels: maps.Clone(s.mounts[mp])})
	}
	return out
}

func (s *Server) handleInfo(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, s.info)
}

// handleRuntime reads the runtime's statistics, which stops the world for
// a moment; a call with gc=1 collects garbage first, as a caller measuring
// what memory is live wants. It takes two collections: what a sync.Pool
// holds survives the first, and keeps alive the whole object the pool is
// a field of (an unmounted layer's FUSE server, with the layer's tree).
func handleRuntime(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("gc") == "1" {
		runtime.GC()
		debug.FreeOSMemory() // the second, which also returns memory
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	writeJSON(w, Runtime{
		Goroutines:   runtime.NumGoroutine(),
		HeapAlloc:    ms.HeapAlloc,
		HeapInuse:    ms.HeapInuse,
		HeapObjects:  ms.HeapObjects,
		Sys:          ms.Sys,
		HeapReleased: ms.HeapReleased,
		NumGC:        ms.NumGC,
	})
}

func (s *Server) handleMounts(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, MountList{Mounts: s.Mounts()})
}

func (s *Server) handleMount(w http.ResponseWriter, r *http.Request) {
	var req MountRequest
	if !readJSON(w, r, &req) {
		return
	}
	if err := s.claim(req.Mountpoint, true); err != nil {
		writeError(w, err)
		return
	}
	err := s.fs.Mount(r.Context(), req.Mountpoint, req.Labels)
	s.release(req.Mountpoint, func() {
		if err == nil {
			s.mounts[req.Mountpoint] = maps.Clone(req.Labels)
		}
	})
	if err != nil {
		writeError(w, err)
		return
	}
	if v := s.verificationOf(r.Context(), req.Mountpoint); v != nil {
		writeJSON(w, MountAnswer{Verification: v})
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// verificationOf returns the verification state of the layer at
// mountpoint, or nil if the FileSystem does not verify or does not list
// it.
func (s *Server) verificationOf(ctx context.Context, mountpoint string) *Verification {
	v, ok := s.fs.(Verifier)
	if !ok {
		return nil
	}
	vs, _, err := v.Verifications(ctx, 0) // at once: generations start past 0
	if err != nil {
		return nil
	}
	for i := range vs {
		if vs[i].Mountpoint == mountpoint {
			return &vs[i]
		}
	}
	return nil
}

func (s *Server) handleCheck(w http.ResponseWriter, r *http.Request) {
	var req MountRequest
	if !readJSON(w, r, &req) {
		return
	}
	writeResult(w, s.fs.Check(r.Context(), req.Mountpoint, req.Labels))
}

func (s *Server) handleUnmount(w http.ResponseWriter, r *http.Request) {
	var req UnmountRequest
	if !readJSON(w, r, &req) {
		return
	}
	if err := s.claim(req.Mountpoint, false); err != nil {
		writeError(w, err)
		return
	}
	err := s.fs.Unmount(r.Context(), req.Mountpoint)
	s.release(req.Mountpoint, func() {
		if err == nil || errdefs.IsNotFound(err) {
			delete(s.mounts, req.Mountpoint)
		}
	})
	writeResult(w, err)
}

func (s *Server) handleCredentials(w http.ResponseWriter, r *http.Request) {
	k, ok := s.fs.(CredentialKeeper)
	if !ok {
		writeError(w, fmt.Errorf("%s: %w", PathCredentials, errdefs.ErrNotImplemented))
		return
	}
	var c Credentials
	if !readJSON(w, r, &c) {
		return
	}
	if c.Host == "" || c.Repo == "" {
		writeError(w, fmt.Errorf("credentials without host or repository: %w", errdefs.ErrInvalidArgument))
		return
	}
	k.SetCredentials(c)
	writeResult(w, nil)
}

// claim marks mountpoint busy for a Mount (mount) or an Unmount. A
// mountpoint takes one such call at a time, and a stopping Server takes no
// new Mount.
func (s *Server) claim(mountpoint string, mount bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case mountpoint == "":
		return fmt.Errorf("no mountpoint: %w", errdefs.ErrInvalidArgument)
	case mount && s.stopping:
		return fmt.Errorf("data plane %d is stopping: %w", s.info.PID, errdefs.ErrUnavailable)
	case s.busy[mountpoint]:
		return fmt.Errorf("mountpoint %s: another call is changing it: %w", mountpoint, errdefs.ErrConflict)
	}
	s.busy[mountpoint] = true
	return nil
}

// release ends a claim, recording its outcome with update under the lock.
func (s *Server) release(mountpoint string, update func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	update()
	delete(s.busy, mountpoint)
}

func (s *Server) handleVerifications(w http.ResponseWriter, r *http.Request) {
	v, ok := s.fs.(Verifier)
	if !ok {
		writeError(w, fmt.Errorf("%s: this data plane does not verify layers: %w", r.URL.Path, errdefs.ErrNotImplemented))
		return
	}
	q := r.URL.Query()
	var since uint64
	if q.Has("since") {
		n, err := strconv.ParseUint(q.Get("since"), 10, 64)
		if err != nil {
			writeError(w, fmt.Errorf("%s: since: %v: %w", r.URL.Path, err, errdefs.ErrInvalidArgument))
			return
		}
		since = n
	}
	wait := time.Duration(s.pollWait.Load())
	if q.Has("wait") {
		d, err := time.ParseDuration(q.Get("wait"))
		if err != nil || d < 0 {
			writeError(w, fmt.Errorf("%s: wait %q: not a duration of 0 or more: %w", r.URL.Path, q.Get("wait"), errdefs.ErrInvalidArgument))
			return
		}
		wait = min(d, wait)
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	defer context.AfterFunc(s.polls, cancel)()
	vs, gen, err := v.Verifications(ctx, since)
	switch {
	case err == nil:
		writeJSON(w, VerificationList{Generation: gen, Verifications: vs})
	case s.polls.Err() != nil:
		writeError(w, fmt.Errorf("data plane %d is stopping: %w", s.info.PID, errdefs.ErrUnavailable))
	case r.Context().Err() == nil && errors.Is(err, context.DeadlineExceeded):
		writeJSON(w, VerificationList{Generation: since}) // nothing new
	default:
		writeError(w, err)
	}
}

func (s *Server) handleShutdown(w http.ResponseWriter, r *http.Request) {
	var req ShutdownRequest
	if !readJSON(w, r, &req) {
		return
	}
	s.mu.Lock()
	n := len(s.mounts) + len(s.busy)
	if !req.Unmount && n > 0 {
		s.mu.Unlock()
		writeError(w, fmt.Errorf("data plane %d serves %d layers: %w", s.info.PID, n, errdefs.ErrFailedPrecondition))
		return
	}
	first := !s.stopping
	s.stopping = true
	s.mu.Unlock()
	var errs []error
	if c, ok := s.fs.(io.Closer); ok && req.Unmount {
		// Close unmounts every layer, and keeps what a layer that is
		// only stopped, not removed, keeps.
		errs = append(errs, c.Close())
		s.mu.Lock()
		clear(s.mounts)
		s.mu.Unlock()
	} else if req.Unmount {
		for _, m := range s.Mounts() {
			err := s.fs.Unmount(r.Context(), m.Mountpoint)
			if err != nil && !errdefs.IsNotFound(err) {
				errs = append(errs, err)
				continue
			}
			s.release(m.Mountpoint, func() { delete(s.mounts, m.Mountpoint) })
		}
	}
	err := errors.Join(errs...)
	if err != nil {
		log.G(r.Context()).WithError(err).Warn("layers left mounted at shutdown")
	}
	writeResult(w, err)
	if first && s.stop != nil {
		s.stop()
	}
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	if err := dec.Decode(v); err != nil {
		writeError(w, fmt.Errorf("%s: request body: %v: %w", r.URL.Path, err, errdefs.ErrInvalidArgument))
		return false
	}
	return true
}

func writeResult(w http.ResponseWriter, err error) {
	if err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func writeError(w http.ResponseWriter, err error) {
	status, body := encodeError(err)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
