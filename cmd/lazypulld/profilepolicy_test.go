package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/config"
	"github.com/lazypull/lazypull/profile"
)

// putProfile stores a profile of img with reads on n, as one fetched from
// the registry would be.
func (n *profNode) putProfile(t *testing.T, img profImage, reads ...profile.Read) {
	t.Helper()
	err := n.prof.store.Put(&profile.Record{Origin: profile.Fetched, Ref: img.ref, Manifest: img.manifest, Created: n.clock.Now(),
		Profile: &profile.Profile{Version: profile.Version, Layers: img.digests(), Reads: reads}})
	if err != nil {
		t.Fatal(err)
	}
}

// recorded waits for the end of the recording of img, after its window,
// and returns its reads.
func (n *profNode) recorded(t *testing.T, img profImage) []profile.Read {
	t.Helper()
	n.clock.advance(time.Minute)
	var rec *profile.Record
	waitFor(t, "the recorded profile to be kept", func() bool {
		var err error
		rec, err = n.prof.store.Get(img.digests())
		return err == nil
	})
	return rec.Profile.Reads
}

// replayOf returns the replay of the profile of image md.
func (n *profNode) replayOf(md digest.Digest) *profile.Replay {
	n.prof.mu.Lock()
	defer n.prof.mu.Unlock()
	if im := n.prof.images[md]; im != nil {
		return im.replay
	}
	return nil
}

// TestProfileRecordsReadsThroughTheMount: what a container reads through
// the mount, within the window, is the profile, chunk by chunk in the
// order first read; what it does not read is not.
func TestProfileRecordsReadsThroughTheMount(t *testing.T) {
	reg := newProfRegistry(t)
	files := profFiles(1)
	base := reg.layer(t, files...)
	img := reg.image(t, "app", base)
	n := newProfNode(t, reg, nil)
	mp := n.mount(t, img, 0)
	waitFor(t, "the recording to begin", func() bool { return n.prof.rec.Recording(base.dgst) })

	readFile(t, mp, files[2]) // etc/conf
	readFile(t, mp, files[0]) // bin/app
	f, err := os.Open(filepath.Join(mp, "big"))
	if err != nil {
		t.Fatal(err)
	}
	var b [10]byte
	_, err = f.ReadAt(b[:], profChunk+5) // the second chunk of big
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	readFile(t, mp, files[2]) // again: counted once

	reads := n.recorded(t, img)
	want := []profile.Read{{Path: "etc/conf"}, {Path: "bin/app"}, {Path: "big", Offset: profChunk}}
	if len(reads) < len(want) {
		t.Fatalf("recorded %+v, want %+v first", reads, want)
	}
	for i, w := range want {
		if reads[i] != w {
			t.Fatalf("recorded %+v, want %+v first", reads, want)
		}
	}
	// The kernel may read ahead in big, never back nor in other files.
	for _, r := range reads[len(want):] {
		if r.Path != "big" || r.Offset <= profChunk {
			t.Errorf("recorded %+v, which was not read", r)
		}
	}
}

// TestProfileRecordsFilesOpenedWithPassthrough: a file that FUSE
// passthrough serves is read by the kernel alone, so its open is what the
// recording sees.
func TestProfileRecordsFilesOpenedWithPassthrough(t *testing.T) {
	reg := newProfRegistry(t)
	files := profFiles(2)
	base := reg.layer(t, files...)
	img := reg.image(t, "app", base)
	n := newProfNode(t, reg, func(c *config.Config) { c.FS.Passthrough = true })
	mp := n.mount(t, img, 0)
	waitFor(t, "the recording to begin", func() bool { return n.prof.rec.Recording(base.dgst) })
	// etc/conf is local, as a prefetch would have made it: lazypull's own
	// reads are no reader's and are not recorded.
	buf := make([]byte, len(files[2].data))
	if _, err := n.prof.layers.get(base.dgst).ReadAt(t.Context(), "etc/conf", buf, 0); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(mp, "etc/conf"))
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if reads := n.recorded(t, img); len(reads) != 1 || reads[0] != (profile.Read{Path: "etc/conf"}) {
		t.Fatalf("recorded %+v, want the file opened", reads)
	}
}

// TestProfileReplayFetchesBeforeReads: the chunks of the image's profile
// are fetched as its layer is mounted, so that the container reading them
// waits for no fetch.
func TestProfileReplayFetchesBeforeReads(t *testing.T) {
	reg := newProfRegistry(t)
	files := profFiles(3)
	base := reg.layer(t, files...)
	img := reg.image(t, "app", base)
	n := newProfNode(t, reg, func(c *config.Config) { c.Profile.Record, c.Profile.Fetch = false, true })
	reads := []profile.Read{{Path: "etc/conf"}, {Path: "big", Offset: 2 * profChunk}, {Path: "big"}, {Path: "big", Offset: profChunk}, {Path: "bin/app"}}
	n.putProfile(t, img, reads...)
	mp := n.mount(t, img, 0)
	cs := n.chunks(t, base.dgst, reads...)
	waitFor(t, "the profile's chunks to be fetched", func() bool { return n.cached(t, base.dgst, cs) })

	misses := n.layers.Metrics().ChunkMisses
	for _, f := range files[:3] {
		readFile(t, mp, f)
	}
	if m := n.layers.Metrics().ChunkMisses; m != misses {
		t.Errorf("reading the profile's files missed %d chunks, want none", m-misses)
	}
	readFile(t, mp, files[3]) // not in the profile
	if m := n.layers.Metrics().ChunkMisses; m == misses {
		t.Error("reading a file the profile does not name missed no chunk")
	}
}

// TestProfileReplaysLayersMountedForAnotherImage: an image that shares its
// base layer with an image mounted before mounts only its own layers; the
// profile's chunks of the shared layer are fetched all the same.
func TestProfileReplaysLayersMountedForAnotherImage(t *testing.T) {
	reg := newProfRegistry(t)
	files := profFiles(4)
	base := reg.layer(t, files...)
	app1 := profFile{"app1", []byte("one")}
	app2 := profFile{"app2", []byte("two")}
	imgA := reg.image(t, "a", base, reg.layer(t, app1))
	imgB := reg.image(t, "b", base, reg.layer(t, app2))
	n := newProfNode(t, reg, func(c *config.Config) { c.Profile.Record, c.Profile.Fetch = false, true })
	shared := []profile.Read{{Path: "etc/conf"}, {Path: "bin/app"}}
	n.putProfile(t, imgB, append(shared, profile.Read{Layer: 1, Path: "app2"})...)

	mpBase := n.mount(t, imgA, 0)
	n.mount(t, imgA, 1)
	mpB := n.mount(t, imgB, 1) // B's base is A's
	baseCs := n.chunks(t, base.dgst, shared...)
	topCs := n.chunks(t, imgB.layers[1].dgst, profile.Read{Path: "app2"})
	waitFor(t, "the profile's chunks to be fetched", func() bool {
		return n.cached(t, base.dgst, baseCs) && n.cached(t, imgB.layers[1].dgst, topCs)
	})
	misses := n.layers.Metrics().ChunkMisses
	readFile(t, mpBase, files[2])
	readFile(t, mpBase, files[0])
	readFile(t, mpB, app2)
	if m := n.layers.Metrics().ChunkMisses; m != misses {
		t.Errorf("reading the profile's files missed %d chunks, want none", m-misses)
	}
}

// TestProfileHostileFetchesNothing: a profile that names what the layer
// does not have (it came from a registry) is refused whole: its good
// chunks are not fetched either.
func TestProfileHostileFetchesNothing(t *testing.T) {
	reg := newProfRegistry(t)
	files := profFiles(5)
	base := reg.layer(t, files...)
	img := reg.image(t, "app", base)
	good := []profile.Read{{Path: "bin/app"}, {Path: "big"}}
	for _, bad := range []profile.Read{
		{Path: "missing"},
		{Path: "etc"},
		{Path: "big", Offset: profChunk + 1},
		{Path: "big", Offset: 3 * profChunk},
	} {
		t.Run(bad.Path, func(t *testing.T) {
			n := newProfNode(t, reg, func(c *config.Config) { c.Profile.Record, c.Profile.Fetch = false, true })
			n.putProfile(t, img, append(good, bad)...)
			mp := n.mount(t, img, 0)
			waitFor(t, "the profile to be refused", func() bool {
				r := n.replayOf(img.manifest)
				return r != nil && r.Stopped()
			})
			if n.cached(t, base.dgst, n.chunks(t, base.dgst, good...)) {
				t.Error("the chunks of a refused profile were fetched")
			}
			misses := n.layers.Metrics().ChunkMisses
			readFile(t, mp, files[0])
			if m := n.layers.Metrics().ChunkMisses; m != misses+1 {
				t.Errorf("reading a file of a refused profile missed %d chunks, want 1", m-misses)
			}
		})
	}
}
