package main

import (
	"fmt"
	"io"
	"runtime/debug"
	"sync"
	"time"

	"github.com/lazypull/lazypull/integration/testbed"
)

// scope is the benchmark's testbed.T: it owns what is started in it (the
// testbed registers cleanups on it) and tears it down on close, last
// started first. Fatal and Fatalf end the function that do runs by
// panicking with a fatal, which do recovers.
type scope struct {
	name string
	log  io.Writer

	mu       sync.Mutex
	cleanups []func()
	failed   bool
	closed   bool
}

var _ testbed.T = (*scope)(nil)

func newScope(name string, log io.Writer) *scope { return &scope{name: name, log: log} }

// fatal is the panic value of Fatal and Fatalf.
type fatal struct{ msg string }

func (s *scope) Helper() {}

func (s *scope) Logf(format string, args ...any) {
	fmt.Fprintf(s.log, "%s %s: %s\n", time.Now().Format("15:04:05.000"), s.name, fmt.Sprintf(format, args...))
}

func (s *scope) Errorf(format string, args ...any) {
	s.mu.Lock()
	s.failed = true
	s.mu.Unlock()
	s.Logf("error: "+format, args...)
}

func (s *scope) Fatal(args ...any) { s.Fatalf("%s", fmt.Sprint(args...)) }

func (s *scope) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.Errorf("%s", msg)
	panic(fatal{msg})
}

func (s *scope) Cleanup(fn func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cleanups = append(s.cleanups, fn)
}

func (s *scope) Failed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failed
}

// do runs fn and turns a Fatal in it (or any panic) into an error. The
// scope stays open: the caller closes it.
func (s *scope) do(fn func() error) (err error) {
	defer func() {
		switch r := recover().(type) {
		case nil:
		case fatal:
			err = fmt.Errorf("%s", r.msg)
		default:
			s.Errorf("panic: %v\n%s", r, debug.Stack())
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	if err = fn(); err != nil {
		s.Errorf("%v", err)
	}
	return err
}

// close runs the cleanups, last registered first; a cleanup that calls
// Fatal does not stop the others. It reports whether the scope failed.
func (s *scope) close() bool {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return s.Failed()
	}
	s.closed = true
	s.mu.Unlock()
	for {
		s.mu.Lock()
		n := len(s.cleanups)
		if n == 0 {
			s.mu.Unlock()
			break
		}
		fn := s.cleanups[n-1]
		s.cleanups = s.cleanups[:n-1]
		s.mu.Unlock()
		_ = s.do(func() error { fn(); return nil })
	}
	return s.Failed()
}
