package integration

import (
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
