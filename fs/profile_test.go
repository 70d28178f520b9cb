package fs

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

// TestPrefetchProfile checks that the chunks of a profile are fetched
// once asked for, so that the container reading them waits for no fetch,
// and that reading other files still fetches.
func TestPrefetchProfile(t *testing.T) {
	es := libEntries(20)
	l := buildLayer(t, es)
	o := newOpener(l)
	f := newFS(t, o, WithReadahead(0), WithDirPrefetch(0), WithBackgroundFetch(false), WithMemoryCacheSize(0), WithCache(newMapCache()))
	mp := mountLayer(t, f, l)
	before := reads(o)
	var cs []ProfileChunk
	for _, e := range []tarEntry{es[15], es[3], es[9]} { // the order a program read them
		cs = append(cs, ProfileChunk{Layer: l.dgst, Path: e.hdr.Name})
	}
	if err := f.PrefetchProfile(context.Background(), cs); err != nil {
		t.Fatal(err)
	}
	waitFetches(t, f)
	n := reads(o)
	if n == before {
		t.Fatal("PrefetchProfile fetched nothing")
	}
	for _, i := range []int{15, 3, 9} {
		checkContent(t, filepath.Join(mp, es[i].hdr.Name), es[i].data)
	}
	if m := reads(o); m != n {
		t.Errorf("reading the profile's files cost %d fetches", m-n)
	}
	checkContent(t, filepath.Join(mp, es[1].hdr.Name), es[1].data)
	if m := reads(o); m != n+1 {
		t.Errorf("reading a file not in the profile cost %d fetches, want 1", m-n)
	}
	got, err := f.ReadChunks(l.dgst)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range got {
		names = append(names, c.Path)
	}
	// What readers read: the three files and the other one, in blob
	// order; not what the prefetch alone fetched.
	want := []string{es[1].hdr.Name, es[3].hdr.Name, es[9].hdr.Name, es[15].hdr.Name}
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Errorf("ReadChunks = %v, want %v", names, want)
	}
}

// TestPrefetchProfileRefusesChunksNotInTheTOC: a profile naming what the
// layer does not have (it came from a registry) fetches nothing and says
// what is wrong.
func TestPrefetchProfileRefusesChunksNotInTheTOC(t *testing.T) {
	const chunkSize = 64 << 10
	big := randomBytes(7, 4*chunkSize)
	l := buildLayer(t, []tarEntry{dir("etc", 0o755), file("etc/passwd-x", 0o644, []byte("root")), file("big", 0o644, big)}, estargz.WithChunkSize(chunkSize))
	o := newOpener(l)
	f := newFS(t, o, WithReadahead(0), WithDirPrefetch(0), WithBackgroundFetch(false), WithMemoryCacheSize(0), WithCache(newMapCache()))
	mountLayer(t, f, l)
	waitFetches(t, f)
	before := reads(o)
	good := ProfileChunk{Layer: l.dgst, Path: "big", Offset: chunkSize}
	for _, tc := range []struct {
		bad  ProfileChunk
		want string
	}{
		{ProfileChunk{Layer: l.dgst, Path: "missing"}, `no regular file "missing"`},
		{ProfileChunk{Layer: l.dgst, Path: "etc"}, `no regular file "etc"`},
		{ProfileChunk{Layer: l.dgst, Path: "big", Offset: chunkSize + 1}, "no chunk starts at offset"},
		{ProfileChunk{Layer: l.dgst, Path: "big", Offset: 4 * chunkSize}, "outside its"},
		{ProfileChunk{Layer: l.dgst, Path: "big", Offset: -1}, "outside its"},
		{ProfileChunk{Layer: digest.FromString("other"), Path: "big"}, "is not mounted"},
	} {
		err := f.PrefetchProfile(context.Background(), []ProfileChunk{good, tc.bad})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !(errdefs.IsInvalidArgument(err) || errdefs.IsNotFound(err)) {
			t.Errorf("PrefetchProfile with %+v: %v, want an error naming %q", tc.bad, err, tc.want)
		}
	}
	waitFetches(t, f)
	if n := reads(o); n != before {
		t.Errorf("refused profiles fetched %d times", n-before)
	}
}

func TestReadChunksOfALayerNotMounted(t *testing.T) {
	f := newFS(t, newOpener())
	if _, err := f.ReadChunks(digest.FromString("x")); !errdefs.IsNotFound(err) {
		t.Fatalf("ReadChunks: %v, want not found", err)
	}
}
