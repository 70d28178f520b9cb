package profile

import (
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// clock is a clock the test moves.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newTestRecorder(t *testing.T, entries int) (*Recorder, *clock) {
	t.Helper()
	c := &clock{now: time.Unix(1000, 0)}
	r, err := NewRecorder(RecorderConfig{Window: 10 * time.Second, Idle: 2 * time.Second, Start: time.Minute,
		Limits: Limits{Size: 1 << 20, Entries: entries}, MaxSessions: 2}, c.Now)
	if err != nil {
		t.Fatal(err)
	}
	return r, c
}

func TestRecorderRecordsFirstReadsInOrder(t *testing.T) {
	r, c := newTestRecorder(t, 100)
	ls := testLayers(2)
	if !r.Begin("r.example/app:1", ls[1], ls) {
		t.Fatal("Begin refused")
	}
	if r.Begin("r.example/app:1", ls[1], ls) {
		t.Fatal("a second Begin of the same image started a second recording")
	}
	r.Read(ls[1], "usr/bin/app", 0)
	c.advance(time.Second)
	r.Read(ls[0], "lib/libc.so.6", 0)
	r.Read(ls[1], "usr/bin/app", 0) // again: counted once
	r.Read(ls[0], "/bad/path", 0)   // not a TOC name: ignored
	r.Read(testLayers(3)[2], "x", 0)
	c.advance(time.Second)
	r.Read(ls[1], "usr/bin/app", 4<<20)
	if got := r.Expire(); len(got) != 0 {
		t.Fatalf("Expire within the window and not idle ended %d recordings", len(got))
	}
	c.advance(2 * time.Second) // idle
	got := r.Expire()
	if len(got) != 1 {
		t.Fatalf("Expire after %v idle ended %d recordings, want 1", 2*time.Second, len(got))
	}
	want := []Read{{1, "usr/bin/app", 0}, {0, "lib/libc.so.6", 0}, {1, "usr/bin/app", 4 << 20}}
	p := got[0].Profile
	if len(p.Reads) != len(want) {
		t.Fatalf("recorded %+v, want %+v", p.Reads, want)
	}
	for i := range want {
		if p.Reads[i] != want[i] {
			t.Fatalf("recorded %+v, want %+v", p.Reads, want)
		}
	}
	if got[0].Origin != Recorded || got[0].Manifest != ls[1] || got[0].Ref != "r.example/app:1" || !got[0].Created.Equal(c.Now()) {
		t.Fatalf("record %+v does not say what it is", got[0])
	}
	if err := p.Validate(DefaultLimits); err != nil {
		t.Fatal(err)
	}
	if r.Recording(ls[0]) {
		t.Fatal("the layer is still recorded after the recording ended")
	}
	r.Read(ls[0], "after", 0) // no recording: nothing happens
}

func TestRecorderWindowCapsABusyStart(t *testing.T) {
	r, c := newTestRecorder(t, 1000)
	ls := testLayers(1)
	r.Begin("app", "", ls)
	for i := range 10 { // a new chunk every second: never idle
		r.Read(ls[0], "data", int64(i)<<20)
		if got := r.Expire(); len(got) != 0 {
			t.Fatalf("ended after %d s, within the window", i)
		}
		c.advance(time.Second)
	}
	got := r.Expire()
	if len(got) != 1 || len(got[0].Profile.Reads) != 10 {
		t.Fatalf("after the window: %d recordings, want 1 of 10 reads", len(got))
	}
}

func TestRecorderEndsAtEntryLimit(t *testing.T) {
	r, _ := newTestRecorder(t, 3)
	ls := testLayers(1)
	r.Begin("app", "", ls)
	for i := range 10 {
		r.Read(ls[0], "f", int64(i))
	}
	got := r.Expire()
	if len(got) != 1 || len(got[0].Profile.Reads) != 3 {
		t.Fatalf("a full recording: %d ended, want 1 of 3 reads", len(got))
	}
}

func TestRecorderDropsImagesNeverRun(t *testing.T) {
	r, c := newTestRecorder(t, 10)
	ls := testLayers(1)
	r.Begin("app", "", ls)
	c.advance(time.Minute)
	if got := r.Expire(); len(got) != 0 {
		t.Fatalf("an image never read gave %d profiles", len(got))
	}
	if !r.Begin("app", "", ls) {
		t.Fatal("the image cannot be recorded again")
	}
}

func TestRecorderBoundsSessionsAndSharesLayers(t *testing.T) {
	r, c := newTestRecorder(t, 10)
	ls := testLayers(4)
	a, b := []digest.Digest{ls[0], ls[1]}, []digest.Digest{ls[0], ls[2]}
	if !r.Begin("a", "", a) || !r.Begin("b", "", b) {
		t.Fatal("Begin refused")
	}
	if r.Begin("c", "", ls[3:]) {
		t.Fatal("Begin beyond MaxSessions")
	}
	r.Read(ls[0], "shared", 0)
	c.advance(10 * time.Second)
	got := r.Expire()
	if len(got) != 2 || len(got[0].Profile.Reads) != 1 || len(got[1].Profile.Reads) != 1 {
		t.Fatalf("a read of a shared layer: %d recordings, want both with it", len(got))
	}
}

func TestReplayHandsOutMountedLayersInOrder(t *testing.T) {
	p := testProfile()
	r := NewReplay()
	if cs := r.Mounted(p.Layers[1]); len(cs) != 0 {
		t.Fatal("chunks handed out before the profile came")
	}
	cs := r.SetProfile(p)
	if len(cs) != 2 || cs[0].Offset != 0 || cs[1].Offset != 4<<20 || cs[0].Layer != p.Layers[1] {
		t.Fatalf("SetProfile handed out %+v, want the two chunks of the mounted layer, in order", cs)
	}
	if !r.Pending() {
		t.Fatal("not pending with a layer to mount")
	}
	if cs := r.Mounted(p.Layers[1]); len(cs) != 0 {
		t.Fatal("a layer handed out twice")
	}
	cs = r.Mounted(p.Layers[0])
	if len(cs) != 1 || cs[0].Path != "usr/lib/x86_64-linux-gnu/libc.so.6" {
		t.Fatalf("Mounted handed out %+v", cs)
	}
	if r.Pending() {
		t.Fatal("pending after every layer was handed out")
	}
	r2 := NewReplay()
	r2.SetProfile(p)
	r2.Stop()
	if cs := r2.Mounted(p.Layers[0]); len(cs) != 0 || r2.Pending() {
		t.Fatal("a stopped replay hands out chunks")
	}
}
