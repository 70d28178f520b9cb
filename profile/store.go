package profile

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
)

// Origins of a stored profile.
const (
	// Recorded is a profile this node recorded.
	Recorded = "recorded"
	// Fetched is a profile fetched from the image's registry.
	Fetched = "fetched"
)

// Record is a stored profile with what it is known by.
type Record struct {
	// Origin is Recorded or Fetched.
	Origin string `json:"origin"`
	// Ref is the image reference of the pull it was recorded or fetched
	// for; Manifest the digest of the image's manifest for the platform
	// pulled (the subject it is published for).
	Ref      string        `json:"ref"`
	Manifest digest.Digest `json:"manifest"`
	// Created is when it was recorded or fetched.
	Created time.Time `json:"created"`
	// Profile is the profile, whose Layers are its key.
	Profile *Profile `json:"profile"`
}

// recordFile is a Record as stored: the profile as raw JSON, decoded with
// Decode's checks.
type recordFile struct {
	Origin   string          `json:"origin"`
	Ref      string          `json:"ref"`
	Manifest digest.Digest   `json:"manifest"`
	Created  time.Time       `json:"created"`
	Profile  json.RawMessage `json:"profile"`
}

// maxRecordExtra bounds what a stored record holds beside its profile.
const maxRecordExtra = 64 << 10

// Store keeps a node's profiles in a directory: one file per image (by
// Key of its layers) and origin, at most max of them, the least recently
// written removed first. A profile is read back with the checks of Decode:
// the directory is the node's, but what it holds may have come from a
// registry. Several processes may share a directory: files are replaced
// whole (written aside, then renamed).
type Store struct {
	dir string
	lim Limits
	max int
}

// OpenStore returns the Store in dir, created (mode 0700) if missing.
func OpenStore(dir string, lim Limits, max int) (*Store, error) {
	if err := lim.check(); err != nil {
		return nil, err
	}
	if max <= 0 {
		return nil, fmt.Errorf("profile store: max_profiles %d, want at least 1: %w", max, errdefs.ErrInvalidArgument)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("profile store: %w", err)
	}
	return &Store{dir: dir, lim: lim, max: max}, nil
}

// Dir is the Store's directory.
func (s *Store) Dir() string { return s.dir }

func (s *Store) file(origin, key string) string {
	return filepath.Join(s.dir, key+"."+origin+".json")
}

// Put stores rec, replacing what the Store held for the same image and
// origin.
func (s *Store) Put(rec *Record) error {
	if rec.Origin != Recorded && rec.Origin != Fetched {
		return fmt.Errorf("profile origin %q: %w", rec.Origin, errdefs.ErrInvalidArgument)
	}
	if rec.Profile == nil {
		return fmt.Errorf("profile record without a profile: %w", errdefs.ErrInvalidArgument)
	}
	raw, err := Encode(rec.Profile, s.lim)
	if err != nil {
		return err
	}
	data, err := json.Marshal(recordFile{rec.Origin, rec.Ref, rec.Manifest, rec.Created.UTC(), raw})
	if err != nil {
		return fmt.Errorf("encode profile record: %w", err)
	}
	name := s.file(rec.Origin, Key(rec.Profile.Layers))
	tmp, err := os.CreateTemp(s.dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("profile store: %w", err)
	}
	_, err = tmp.Write(data)
	err = errors.Join(err, tmp.Close())
	if err == nil {
		err = os.Rename(tmp.Name(), name)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("profile store: %w", err)
	}
	return s.trim()
}

// Get returns the profile of the image of layers: the one this node
// recorded, else one it fetched. The error is of class NotFound when
// there is none; a stored file that does not decode is removed, and
// NotFound is returned with the reason.
func (s *Store) Get(layers []digest.Digest) (*Record, error) {
	key := Key(layers)
	var errs []error
	for _, origin := range []string{Recorded, Fetched} {
		rec, err := s.read(s.file(origin, key))
		if err == nil && !slices.Equal(rec.Profile.Layers, layers) {
			err = fmt.Errorf("profile %s holds the profile of other layers", s.file(origin, key))
		}
		switch {
		case err == nil:
			return rec, nil
		case errors.Is(err, os.ErrNotExist):
		default:
			os.Remove(s.file(origin, key))
			errs = append(errs, err)
		}
	}
	return nil, fmt.Errorf("no profile for image %s: %w", key, errors.Join(append(errs, errdefs.ErrNotFound)...))
}

// Has reports whether the Store holds a profile of origin for layers.
func (s *Store) Has(origin string, layers []digest.Digest) bool {
	_, err := os.Stat(s.file(origin, Key(layers)))
	return err == nil
}

// List returns the profiles stored, most recent first. Files that do not
// decode are skipped and named in the error.
func (s *Store) List() ([]*Record, error) {
	names, err := filepath.Glob(filepath.Join(s.dir, "*.json"))
	if err != nil {
		return nil, err
	}
	var recs []*Record
	var errs []error
	for _, n := range names {
		rec, err := s.read(n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		recs = append(recs, rec)
	}
	slices.SortFunc(recs, func(a, b *Record) int { return b.Created.Compare(a.Created) })
	return recs, errors.Join(errs...)
}

func (s *Store) read(name string) (*Record, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, s.lim.Size+maxRecordExtra+1))
	if err != nil {
		return nil, fmt.Errorf("profile %s: %w", name, err)
	}
	if int64(len(data)) > s.lim.Size+maxRecordExtra {
		return nil, fmt.Errorf("profile %s: larger than %d bytes: %w", name, s.lim.Size+maxRecordExtra, errdefs.ErrInvalidArgument)
	}
	var rf recordFile
	if err := strictJSON(data, &rf); err != nil {
		return nil, fmt.Errorf("profile %s: %v: %w", name, err, errdefs.ErrInvalidArgument)
	}
	p, err := DecodeBytes(rf.Profile, s.lim)
	if err != nil {
		return nil, fmt.Errorf("profile %s: %w", name, err)
	}
	if rf.Origin != Recorded && rf.Origin != Fetched || !strings.HasSuffix(name, "."+rf.Origin+".json") {
		return nil, fmt.Errorf("profile %s: origin %q does not match its name: %w", name, rf.Origin, errdefs.ErrInvalidArgument)
	}
	return &Record{Origin: rf.Origin, Ref: rf.Ref, Manifest: rf.Manifest, Created: rf.Created, Profile: p}, nil
}

// trim removes the least recently written profiles beyond max.
func (s *Store) trim() error {
	names, err := filepath.Glob(filepath.Join(s.dir, "*.json"))
	if err != nil || len(names) <= s.max {
		return err
	}
	type file struct {
		name string
		mod  time.Time
	}
	var files []file
	for _, n := range names {
		if st, err := os.Stat(n); err == nil {
			files = append(files, file{n, st.ModTime()})
		}
	}
	slices.SortFunc(files, func(a, b file) int { return cmp.Or(a.mod.Compare(b.mod), cmp.Compare(a.name, b.name)) })
	var errs []error
	for _, f := range files[:max(0, len(files)-s.max)] {
		if err := os.Remove(f.name); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
