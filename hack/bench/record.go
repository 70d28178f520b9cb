package main

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/integration/testbed"
)

// recordStart returns the regular files that the start workload of img
// reads, relative to the root: the workload runs once, with containerd,
// on a plain copy of the image's root filesystem bind-mounted with
// strictatime, and the files whose access time moved are the ones it read
// (exec and mmap count too). An overlayfs snapshot would not do: reads
// through overlayfs leave the access times of its lower layers alone.
func (b *bench) recordStart(ctx context.Context, img *image) ([]string, error) {
	s := newScope("record "+img.Name, b.log)
	defer s.close()
	var files []string
	err := s.do(func() error {
		dir := filepath.Join(testbed.Dir(s, "record"), "rootfs")
		if err := os.Mkdir(dir, 0o755); err != nil {
			return err
		}
		if err := command("tar", "-xpf", img.rootfs, "--numeric-owner", "-C", dir); err != nil {
			return err
		}
		for p, content := range img.Spec.Files {
			if err := os.WriteFile(filepath.Join(dir, p), []byte(content), 0o644); err != nil {
				return err
			}
		}
		if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind mount %s: %w", dir, err)
		}
		if err := unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_STRICTATIME, ""); err != nil {
			return fmt.Errorf("remount %s strictatime: %w", dir, err)
		}
		c := testbed.StartContainerd(s, testbed.ContainerdOptions{Flavour: b.flavour})
		started := time.Now()
		// No image, so no image config: set what mkimage puts in it.
		out, err := c.Ctr(ctx, append([]string{"run", "--rm", "--rootfs", "--runc-root", c.RuncRoot,
			"--fifo-dir", filepath.Join(c.Dir, "fifo"), "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"--env", "LANG=C.UTF-8", dir, "record"}, img.Spec.Start.Args...)...)
		if err != nil {
			return err
		}
		if !lastLineMatches(out, img.Spec.Start.Want) {
			return fmt.Errorf("%s printed %q, want a last line matching %q", strings.Join(img.Spec.Start.Args, " "), out, img.Spec.Start.Want)
		}
		files, err = readSince(dir, started)
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no file of %s was read by %s (access times not kept?)", img.Name, strings.Join(img.Spec.Start.Args, " "))
	}
	return files, nil
}

// readSince lists the regular files under root accessed at or after t.
func readSince(root string, t time.Time) ([]string, error) {
	var files []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no stat", p)
		}
		if !time.Unix(st.Atim.Unix()).Before(t) {
			rel, err := filepath.Rel(root, p)
			if err != nil {
				return err
			}
			files = append(files, rel)
		}
		return nil
	})
	slices.Sort(files)
	return files, err
}

// writeList writes the files as a `lazypull convert --prioritize` list.
func writeList(path, about string, files []string) error {
	var sb strings.Builder
	fmt.Fprintf(&sb, "# %s\n", about)
	for _, f := range files {
		sb.WriteString(f + "\n")
	}
	return os.WriteFile(path, []byte(sb.String()), 0o644)
}
