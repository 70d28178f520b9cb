package main

import (
	"io"
	"strings"
	"testing"
)

func TestScope(t *testing.T) {
	s := newScope("test", io.Discard)
	var order []int
	s.Cleanup(func() { order = append(order, 1) })
	s.Cleanup(func() { s.Fatal("cleanup fails") })
	s.Cleanup(func() { order = append(order, 3) })
	err := s.do(func() error {
		s.Fatalf("stop %d", 42)
		t.Error("Fatalf returned")
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "stop 42") {
		t.Errorf("do = %v, want the Fatalf message", err)
	}
	if !s.close() {
		t.Error("close did not report the failure")
	}
	if len(order) != 2 || order[0] != 3 || order[1] != 1 {
		t.Errorf("cleanups ran in order %v, want [3 1] (the failing one between)", order)
	}
}
