package integration

import (
	"archive/tar"
	"context"
	"os"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"

	"github.com/lazypull/lazypull/integration/testbed"
	"github.com/lazypull/lazypull/integration/testimage"
)

// testImage is the project's test image, built once per test binary.
type testImage struct {
	layers   []testimage.Layer
	img      v1.Image
	expected testimage.Tree
	// chainIDs are the chain IDs of the layers, bottom first: the names of
	// the committed snapshots after an unpack.
	chainIDs []digest.Digest
}

var (
	defaultImageOnce sync.Once
	defaultImage     *testImage
	defaultImageErr  error
)

func loadDefaultImage() (*testImage, error) {
	entry, err := os.ReadFile(entrypointBin)
	if err != nil {
		return nil, err
	}
	ti := &testImage{layers: testimage.Default(entry)}
	if ti.expected, err = testimage.Flatten(ti.layers); err != nil {
		return nil, err
	}
	if ti.img, err = testimage.Image(ti.layers, []string{"/" + testimage.EntrypointPath}); err != nil {
		return nil, err
	}
	// The chain IDs come from the DiffIDs go-containerregistry computed
	// from our tar streams, not from anything containerd reports.
	cfg, err := ti.img.ConfigFile()
	if err != nil {
		return nil, err
	}
	var diffIDs []digest.Digest
	for _, d := range cfg.RootFS.DiffIDs {
		diffIDs = append(diffIDs, digest.Digest(d.String()))
	}
	ti.chainIDs = identity.ChainIDs(diffIDs)
	return ti, nil
}

// fileBytes is the size of the regular files of all layers of the image
// (a file an upper layer replaces counted in each): what lazypull counts
// as the layers' usage, but for the blocks they take.
func (ti *testImage) fileBytes() int64 {
	var n int64
	for _, l := range ti.layers {
		for _, e := range l.Entries {
			if e.Type == tar.TypeReg {
				n += int64(len(e.Data))
			}
		}
	}
	return n
}

// pushConverted pushes the test image to lb's registry, converts it with
// `lazypull convert` and returns the eStargz image's reference.
func pushConverted(t *testing.T, ctx context.Context, lb *lazyBed) (string, *testImage) {
	t.Helper()
	orig, img := pushDefaultImage(t, ctx, lb.Registry)
	return convertImage(t, ctx, orig, lb.Registry.Ref("lazypull/testimage:esgz")), img
}

// pushDefaultImage pushes the test image to reg and returns its reference.
func pushDefaultImage(t *testing.T, ctx context.Context, reg *testbed.Registry) (string, *testImage) {
	t.Helper()
	defaultImageOnce.Do(func() { defaultImage, defaultImageErr = loadDefaultImage() })
	if defaultImageErr != nil {
		t.Fatalf("build test image: %v", defaultImageErr)
	}
	ref := reg.Ref("lazypull/testimage:1")
	if _, err := testimage.Push(ctx, ref, defaultImage.img); err != nil {
		t.Fatal(err)
	}
	return ref, defaultImage
}
