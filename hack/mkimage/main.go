// Command mkimage turns a Debian root filesystem tar (hack/rootfs.sh) into a
// two-layer gzip image and pushes it to a registry, the way
// `FROM debian` + `RUN apt-get install ...` would have layered it: the
// files of the dpkg packages matching -split go into the upper layer,
// everything else into the base layer.
//
//	mkimage [flags] ROOTFS.tar REF
//
// The pushed reference, with its digest, goes to stdout; a summary to
// stderr. Used by hack/demo.sh.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func main() {
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fset := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	fset.SetOutput(stderr)
	split := fset.String("split", `^(lib)?python3`, "`REGEXP` of dpkg package names (without :arch) whose files form the upper layer")
	cmd := fset.String("cmd", "python3", "the image's default command (split on spaces)")
	tmpDir := fset.String("tmp-dir", "", "`DIR` to stage the layers in (default: $TMPDIR)")
	fset.Usage = func() {
		fmt.Fprintf(stderr, "Usage: mkimage [flags] ROOTFS.tar REF\n\nSplits a Debian rootfs tar into a base and an upper layer and pushes it as a gzip image.\n\nFlags:\n")
		fset.PrintDefaults()
	}
	if err := fset.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fset.NArg() != 2 {
		fset.Usage()
		return 2
	}
	re, err := regexp.Compile(*split)
	if err != nil {
		fmt.Fprintf(stderr, "mkimage: -split: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err = mkimage(ctx, fset.Arg(0), fset.Arg(1), re, strings.Fields(*cmd), *tmpDir, stdout, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "mkimage: %v\n", err)
		return 1
	}
	return 0
}

func mkimage(ctx context.Context, rootfs, dst string, split *regexp.Regexp, cmd []string, tmpDir string, stdout, stderr io.Writer) error {
	ref, err := name.ParseReference(dst)
	if err != nil {
		return err
	}
	owners, err := readOwners(rootfs, split)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp(tmpDir, "mkimage-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	basePath, upperPath := filepath.Join(dir, "base.tar.gz"), filepath.Join(dir, "upper.tar.gz")
	st, err := splitLayers(rootfs, owners, basePath, upperPath)
	if err != nil {
		return err
	}
	if st.upperFiles == 0 {
		return fmt.Errorf("no file of %s belongs to a package matching %q", rootfs, split)
	}

	created := v1.Time{Time: time.Now().UTC().Truncate(time.Second)}
	img := empty.Image
	for _, l := range []struct{ path, by string }{
		{basePath, "debootstrap --variant=minbase"},
		{upperPath, "files of the packages matching " + split.String()},
	} {
		layer, err := tarball.LayerFromFile(l.path)
		if err != nil {
			return err
		}
		img, err = mutate.Append(img, mutate.Addendum{
			Layer:   layer,
			History: v1.History{Created: created, CreatedBy: l.by, Comment: "hack/mkimage"},
		})
		if err != nil {
			return err
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Created = "linux", runtime.GOARCH, created
	cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"}
	cf.Config.Cmd = cmd
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	dgst, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "mkimage: pushed %s@%s\n", ref, dgst)
	fmt.Fprintf(stderr, "mkimage: layers: base %s + upper %s gzip (%d + %d files, %s uncompressed)\n",
		human(st.baseSize), human(st.upperSize), st.baseFiles, st.upperFiles, human(st.tarBytes))
	fmt.Fprintf(stdout, "%s@%s\n", ref.Context().Name(), dgst)
	return nil
}

func human(n int64) string {
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
