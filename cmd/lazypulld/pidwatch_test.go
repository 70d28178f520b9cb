package main

import (
	"context"
	"os/exec"
	"testing"
	"time"
)

// TestPidWatchPoll checks the fallback of a data plane's watcher: polling
// the pidfd tells when a process that is not waited for has exited, and
// stops when its context ends.
func TestPidWatchPoll(t *testing.T) {
	cmd := exec.Command("sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	w, err := watchPID(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if w.poll(ctx, time.Millisecond) {
		t.Fatal("poll says a running process exited")
	}

	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	done := make(chan bool, 1)
	go func() { done <- w.poll(t.Context(), time.Millisecond) }()
	select {
	case gone := <-done:
		if !gone {
			t.Fatal("poll ended without the process's exit")
		}
	case <-time.After(time.Minute):
		t.Fatal("poll did not see the process exit within a minute")
	}
	w.reap()
}
