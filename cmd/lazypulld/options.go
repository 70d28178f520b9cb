package main

import (
	"github.com/containerd/containerd/v2/core/snapshots"

	"github.com/lazypull/lazypull/config"
	"github.com/lazypull/lazypull/snapshotter"
)

// newSnapshotter is the one place where the configuration becomes options
// of the packages the daemon is built from. Settings for the filesystem and
// the registry client will be turned into snapshotter.WithFileSystem and its
// arguments here.
func newSnapshotter(cfg *config.Config) (snapshots.Snapshotter, error) {
	var opts []snapshotter.Opt
	return snapshotter.New(cfg.Root, opts...)
}
