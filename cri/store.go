package cri

import (
	"context"
	"strings"
	"sync"
	"time"
)

// Auth is what a registry accepts as proof of who pulls: a user name and
// a password, or an identity token as Secret with an empty User.
type Auth struct {
	User, Secret string
}

// Keeper is where the proxy keeps the credentials of pulls. Store keeps
// them in memory; a daemon that reads registries from other processes can
// hand them on instead.
type Keeper interface {
	// Keep records a for repository repo of registry host, in place of
	// what was there, and returns a function that undoes that if nothing
	// has replaced a since (the pull a came with failed). Keep must not
	// block for long: the pull waits for it, and ctx is the pull's.
	Keep(ctx context.Context, host, repo string, a Auth) (undo func())
}

// DefaultMaxEntries bounds the repositories a Store keeps credentials for.
const DefaultMaxEntries = 4096

// Store keeps credentials in memory by registry host and repository, each
// for a time to live from the pull that brought it; a later pull renews
// it. Beyond its bound, the entry that expires first goes. It never writes
// credentials anywhere. Its methods are safe for concurrent use.
type Store struct {
	ttl time.Duration
	max int
	now func() time.Time // a test's clock

	mu      sync.Mutex
	entries map[storeKey]*storeEntry
}

type storeKey struct{ host, repo string }

type storeEntry struct {
	auth    Auth
	expires time.Time
	prev    *storeEntry // what Keep replaced, for its undo; its own prev is nil
}

// NewStore returns a Store whose entries live for ttl, at most maxEntries
// of them (DefaultMaxEntries if maxEntries < 1).
func NewStore(ttl time.Duration, maxEntries int) *Store {
	if maxEntries < 1 {
		maxEntries = DefaultMaxEntries
	}
	return &Store{ttl: ttl, max: maxEntries, now: time.Now, entries: map[storeKey]*storeEntry{}}
}

var _ Keeper = (*Store)(nil)

// Keep implements Keeper.
func (s *Store) Keep(_ context.Context, host, repo string, a Auth) (undo func()) {
	k := storeKey{CanonicalHost(host), repo}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	e := &storeEntry{auth: a, expires: now.Add(s.ttl)}
	if old, ok := s.entries[k]; ok && now.Before(old.expires) {
		e.prev = &storeEntry{auth: old.auth, expires: old.expires}
	} else {
		s.makeRoom(now)
	}
	s.entries[k] = e
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.entries[k] != e {
			return // a later pull's credentials: leave them
		}
		if e.prev != nil && s.now().Before(e.prev.expires) {
			s.entries[k] = e.prev
		} else {
			delete(s.entries, k)
		}
	}
}

// makeRoom removes expired entries, then, while the store is full, the
// entry that expires first. Called with s.mu held, before adding a key.
func (s *Store) makeRoom(now time.Time) {
	if len(s.entries) < s.max {
		return
	}
	for k, e := range s.entries {
		if !now.Before(e.expires) {
			delete(s.entries, k)
		}
	}
	for len(s.entries) >= s.max {
		var first storeKey
		var at time.Time
		for k, e := range s.entries {
			if at.IsZero() || e.expires.Before(at) {
				first, at = k, e.expires
			}
		}
		delete(s.entries, first)
	}
}

// Credentials returns the credentials kept for repository repo of registry
// host, if they have not expired.
func (s *Store) Credentials(host, repo string) (user, secret string, ok bool) {
	k := storeKey{CanonicalHost(host), repo}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[k]
	if !ok {
		return "", "", false
	}
	if !s.now().Before(e.expires) {
		delete(s.entries, k)
		return "", "", false
	}
	return e.auth.User, e.auth.Secret, true
}

// Entry returns the credentials kept for repository repo of registry host
// and when they expire, if they have not expired.
func (s *Store) Entry(host, repo string) (Auth, time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[storeKey{CanonicalHost(host), repo}]
	if !ok || !s.now().Before(e.expires) {
		return Auth{}, time.Time{}, false
	}
	return e.auth, e.expires, true
}

// Each calls fn for every entry that has not expired, under the store's
// lock: fn must not call the store.
func (s *Store) Each(fn func(host, repo string, a Auth, expires time.Time)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for k, e := range s.entries {
		if now.Before(e.expires) {
			fn(k.host, k.repo, e.auth, e.expires)
		}
	}
}

// Set records a for repository repo of registry host until expires, in
// place of what was there; a zero expires removes the entry. It is how a
// process that reads registries takes the entries of another's Store.
func (s *Store) Set(host, repo string, a Auth, expires time.Time) {
	k := storeKey{CanonicalHost(host), repo}
	s.mu.Lock()
	defer s.mu.Unlock()
	if expires.IsZero() {
		delete(s.entries, k)
		return
	}
	if _, ok := s.entries[k]; !ok {
		s.makeRoom(s.now())
	}
	s.entries[k] = &storeEntry{auth: a, expires: expires}
}

// Len returns how many repositories the store holds credentials for,
// expired ones included until they are looked up or pushed out.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.entries)
}

// CanonicalHost names Docker Hub "docker.io" whichever of its host names
// is used (image references say docker.io, its registry API is at
// registry-1.docker.io, docker's config.json says index.docker.io).
func CanonicalHost(host string) string {
	switch h := strings.ToLower(host); h {
	case "registry-1.docker.io", "index.docker.io":
		return "docker.io"
	default:
		return h
	}
}
