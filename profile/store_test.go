package profile

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func TestStorePutGet(t *testing.T) {
	s, err := OpenStore(filepath.Join(t.TempDir(), "profiles"), DefaultLimits, 8)
	if err != nil {
		t.Fatal(err)
	}
	p := testProfile()
	if _, err := s.Get(p.Layers); !errdefs.IsNotFound(err) {
		t.Fatalf("Get of an empty store: %v, want not found", err)
	}
	fetched := &Record{Origin: Fetched, Ref: "r.example/app:1", Manifest: testLayers(9)[8], Created: time.Unix(100, 0), Profile: p}
	if err := s.Put(fetched); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(p.Layers)
	if err != nil || got.Origin != Fetched || got.Ref != fetched.Ref || got.Manifest != fetched.Manifest || len(got.Profile.Reads) != 3 {
		t.Fatalf("Get = %+v, %v; want the fetched profile", got, err)
	}
	recorded := *fetched
	recorded.Origin = Recorded
	recorded.Profile = &Profile{Version: 1, Layers: p.Layers, Reads: p.Reads[:1]}
	if err := s.Put(&recorded); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(p.Layers); err != nil || got.Origin != Recorded || len(got.Profile.Reads) != 1 {
		t.Fatalf("Get = %+v, %v; want the recorded profile, which wins", got, err)
	}
	if !s.Has(Fetched, p.Layers) || !s.Has(Recorded, p.Layers) || s.Has(Recorded, p.Layers[:1]) {
		t.Fatal("Has does not tell what is stored")
	}
	recs, err := s.List()
	if err != nil || len(recs) != 2 {
		t.Fatalf("List = %d records, %v; want 2", len(recs), err)
	}
}

// TestStoreDropsDamagedFiles: a stored profile that does not decode (or
// that claims other layers than its name says) is removed, not served.
func TestStoreDropsDamagedFiles(t *testing.T) {
	s, err := OpenStore(t.TempDir(), DefaultLimits, 8)
	if err != nil {
		t.Fatal(err)
	}
	p := testProfile()
	if err := s.Put(&Record{Origin: Recorded, Profile: p}); err != nil {
		t.Fatal(err)
	}
	name := s.file(Recorded, Key(p.Layers))
	if err := os.WriteFile(name, []byte(`{"origin":"recorded","profile":{"version":1,"layers":[],"reads":[]},"extra":1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(p.Layers); !errdefs.IsNotFound(err) {
		t.Fatalf("Get of a damaged file: %v, want not found", err)
	}
	if _, err := os.Stat(name); !os.IsNotExist(err) {
		t.Fatalf("the damaged file is still there: %v", err)
	}
	// Another image's profile under this image's name.
	other := &Profile{Version: 1, Layers: testLayers(3), Reads: []Read{{Path: "a"}}}
	if err := s.Put(&Record{Origin: Fetched, Profile: other}); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(s.file(Fetched, Key(other.Layers)), s.file(Fetched, Key(p.Layers))); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(p.Layers); !errdefs.IsNotFound(err) {
		t.Fatalf("Get of another image's profile: %v, want not found", err)
	}
}

func TestStoreKeepsAtMostMax(t *testing.T) {
	s, err := OpenStore(t.TempDir(), DefaultLimits, 3)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		p := &Profile{Version: 1, Layers: testLayers(i + 1), Reads: []Read{{Path: "a"}}}
		if err := s.Put(&Record{Origin: Recorded, Profile: p}); err != nil {
			t.Fatal(err)
		}
		// Files written within one tick of the file system's clock are
		// told apart by their times set here, oldest first.
		at := time.Unix(int64(1000+i), 0)
		if err := os.Chtimes(s.file(Recorded, Key(p.Layers)), at, at); err != nil {
			t.Fatal(err)
		}
	}
	names, _ := filepath.Glob(filepath.Join(s.Dir(), "*.json"))
	if len(names) > 3 {
		t.Fatalf("%d profiles stored, want at most 3", len(names))
	}
	if !s.Has(Recorded, testLayers(5)) {
		t.Fatal("the newest profile was removed")
	}
}
