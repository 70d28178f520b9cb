package cri

import (
	"context"
	"fmt"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newTestStore(ttl time.Duration, max int) (*Store, *clock) {
	c := &clock{t: time.Unix(1_000_000, 0)}
	s := NewStore(ttl, max)
	s.now = c.now
	return s, c
}

func wantCreds(t *testing.T, s *Store, host, repo string, want Auth, wantOK bool) {
	t.Helper()
	u, p, ok := s.Credentials(host, repo)
	if ok != wantOK || u != want.User || p != want.Secret {
		t.Errorf("Credentials(%q, %q) = %q, %q, %v; want %q, %q, %v", host, repo, u, p, ok, want.User, want.Secret, wantOK)
	}
}

// Credentials are per host and repository: another repository of the same
// registry, or another registry, gets none.
func TestStoreKeysByHostAndRepository(t *testing.T) {
	ctx := context.Background()
	s, _ := newTestStore(time.Hour, 0)
	a := Auth{User: "alice", Secret: "pw-a"}
	s.Keep(ctx, "registry.example:5000", "team-a/app", a)
	wantCreds(t, s, "registry.example:5000", "team-a/app", a, true)
	wantCreds(t, s, "registry.example:5000", "team-b/app", Auth{}, false)
	wantCreds(t, s, "registry.example", "team-a/app", Auth{}, false)
	wantCreds(t, s, "REGISTRY.example:5000", "team-a/app", a, true)

	// Docker Hub under any of its names.
	h := Auth{Secret: "token"}
	s.Keep(ctx, "docker.io", "library/busybox", h)
	wantCreds(t, s, "registry-1.docker.io", "library/busybox", h, true)
	wantCreds(t, s, "index.docker.io", "library/busybox", h, true)
}

// Credentials expire ttl after the pull that kept them; a later pull renews
// them.
func TestStoreExpiry(t *testing.T) {
	ctx := context.Background()
	s, c := newTestStore(time.Hour, 0)
	a := Auth{User: "u", Secret: "p"}
	s.Keep(ctx, "r", "x", a)
	c.t = c.t.Add(59 * time.Minute)
	wantCreds(t, s, "r", "x", a, true)
	s.Keep(ctx, "r", "x", a) // a pull again
	c.t = c.t.Add(59 * time.Minute)
	wantCreds(t, s, "r", "x", a, true)
	c.t = c.t.Add(time.Minute)
	wantCreds(t, s, "r", "x", Auth{}, false)
	if s.Len() != 0 {
		t.Errorf("expired entry still held after lookup: Len %d", s.Len())
	}
}

// The undo of a failed pull puts back what its credentials replaced, unless
// a later pull has replaced them meanwhile.
func TestStoreUndo(t *testing.T) {
	ctx := context.Background()
	s, _ := newTestStore(time.Hour, 0)
	good, bad, later := Auth{User: "u", Secret: "good"}, Auth{User: "u", Secret: "bad"}, Auth{User: "u", Secret: "later"}
	s.Keep(ctx, "r", "x", good)
	undo := s.Keep(ctx, "r", "x", bad)
	wantCreds(t, s, "r", "x", bad, true) // while the pull is in flight
	undo()
	wantCreds(t, s, "r", "x", good, true)

	undo = s.Keep(ctx, "r", "x", bad)
	s.Keep(ctx, "r", "x", later)
	undo()
	wantCreds(t, s, "r", "x", later, true)

	undo = s.Keep(ctx, "r", "y", bad) // nothing before it
	undo()
	wantCreds(t, s, "r", "y", Auth{}, false)
}

// A full store makes room by dropping the expired entries, then the one
// that expires first; it never holds more than its bound.
func TestStoreBound(t *testing.T) {
	ctx := context.Background()
	s, c := newTestStore(time.Hour, 3)
	for i := range 3 {
		s.Keep(ctx, "r", fmt.Sprint(i), Auth{Secret: fmt.Sprint(i)})
		c.t = c.t.Add(time.Minute)
	}
	s.Keep(ctx, "r", "0", Auth{Secret: "0"}) // renewed: now expires last
	s.Keep(ctx, "r", "3", Auth{Secret: "3"})
	if s.Len() != 3 {
		t.Fatalf("Len %d, want 3", s.Len())
	}
	wantCreds(t, s, "r", "1", Auth{}, false) // expired first
	for _, k := range []string{"0", "2", "3"} {
		wantCreds(t, s, "r", k, Auth{Secret: k}, true)
	}
	c.t = c.t.Add(2 * time.Hour)
	s.Keep(ctx, "r", "4", Auth{Secret: "4"})
	if s.Len() != 1 {
		t.Errorf("Len %d after everything else expired, want 1", s.Len())
	}
}

// Set replaces or removes an entry with the expiry it is given, as a data
// plane takes the daemon's entries; Each lists what has not expired.
func TestStoreSet(t *testing.T) {
	s, c := newTestStore(time.Hour, 0)
	a := Auth{User: "u", Secret: "p"}
	s.Set("r", "x", a, c.t.Add(time.Minute))
	s.Set("r", "y", a, c.t.Add(time.Hour))
	if got, exp, ok := s.Entry("r", "x"); !ok || got != a || !exp.Equal(c.t.Add(time.Minute)) {
		t.Errorf("Entry = %+v, %v, %v", got, exp, ok)
	}
	c.t = c.t.Add(2 * time.Minute)
	var repos []string
	s.Each(func(host, repo string, _ Auth, _ time.Time) { repos = append(repos, repo) })
	if len(repos) != 1 || repos[0] != "y" {
		t.Errorf("Each listed %v, want [y]", repos)
	}
	s.Set("r", "y", Auth{}, time.Time{})
	wantCreds(t, s, "r", "y", Auth{}, false)
}
