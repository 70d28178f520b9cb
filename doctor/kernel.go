package doctor

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// checkKernel checks /dev/fuse, overlayfs and FUSE passthrough.
func (r *run) checkKernel() {
	r.checkFUSE()
	r.checkOverlay()
	r.checkPassthrough()
}

func (r *run) checkFUSE() {
	const check = "kernel.fuse"
	var st unix.Stat_t
	if err := unix.Stat("/dev/fuse", &st); err != nil {
		r.add(check, Fail, fmt.Sprintf("/dev/fuse: %v: lazypulld cannot mount layers", err),
			"load the module (modprobe fuse; the systemd unit does it before start), or in a container give it the device (--device /dev/fuse)")
		return
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(st.Rdev) != 10 || unix.Minor(st.Rdev) != 229 {
		r.add(check, Fail, "/dev/fuse is not the FUSE character device (10, 229)", "remove it and load the fuse module (modprobe fuse)")
		return
	}
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		s := Fail
		if errors.Is(err, unix.EACCES) && os.Geteuid() != 0 {
			s = Warn // lazypulld runs as root; this process does not
		}
		r.add(check, s, fmt.Sprintf("cannot open /dev/fuse: %v", err), "run lazypulld (and doctor) as root, and in a container allow the device")
		return
	}
	unix.Close(fd)
	r.add(check, OK, "/dev/fuse opens", "")
}

func (r *run) checkOverlay() {
	const check = "kernel.overlayfs"
	data, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		r.add(check, Warn, fmt.Sprintf("cannot read /proc/filesystems: %v", err), "")
		return
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[len(f)-1] == "overlay" {
			r.add(check, OK, "overlay is in /proc/filesystems", "")
			return
		}
	}
	rel := kernelRelease()
	if mods, _ := filepath.Glob("/lib/modules/" + rel + "/kernel/fs/overlayfs/overlay.ko*"); len(mods) > 0 {
		r.add(check, Warn, "overlay is not loaded yet (the module is installed, and a mount loads it)", "modprobe overlay, and add it to /etc/modules-load.d to be sure")
		return
	}
	r.add(check, Fail, "this kernel has no overlay filesystem: containers cannot be assembled from layers", "use a kernel with CONFIG_OVERLAY_FS")
}

// Filesystems on which a file cannot be a FUSE passthrough backing file:
// the kernel allows a backing file's filesystem a stacking depth below the
// FUSE server's max_stack_depth, which lazypulld sets to 1.
var stackedFS = map[int64]string{
	0x794c7630: "overlayfs",
	0xf15f:     "ecryptfs",
}

// checkPassthrough checks what FUSE passthrough needs: Linux 6.9 or later
// built with CONFIG_FUSE_PASSTHROUGH, and a chunk cache on a filesystem
// that is not itself stacked. Without it files are read through lazypulld,
// slower but correct: a warning.
func (r *run) checkPassthrough() {
	const check = "kernel.passthrough"
	l := r.opts.Lazypull
	if !l.Passthrough {
		r.add(check, Skip, "FUSE passthrough is off in lazypulld's config ([fs] passthrough = false)", "")
		return
	}
	rel := kernelRelease()
	var is issues
	if !releaseAtLeast(rel, 6, 9) {
		is.add(Warn, fmt.Sprintf("kernel %s has no FUSE passthrough (Linux 6.9 and later): cached files are read through lazypulld, at about half the speed of a local file", rel),
			"upgrade the kernel to 6.9 or later for passthrough reads (optional)")
	} else if set, known := kernelConfig(rel, "CONFIG_FUSE_PASSTHROUGH"); known && !set {
		is.add(Warn, fmt.Sprintf("kernel %s is built without CONFIG_FUSE_PASSTHROUGH: cached files are read through lazypulld", rel),
			"use a kernel built with CONFIG_FUSE_PASSTHROUGH=y (optional)")
	}
	if r.daemon.userNS {
		is.add(Warn, fmt.Sprintf("lazypulld (pid %d) runs in a user namespace: the kernel allows passthrough only with CAP_SYS_ADMIN in the initial one", r.daemon.pid),
			"run lazypulld in the host's user namespace (a privileged DaemonSet or a host service)")
	}
	if fs, dir := stackedFSOf(l.CacheDir); fs != "" {
		is.add(Warn, fmt.Sprintf("the chunk cache %s is on %s (%s): the kernel refuses passthrough from a stacked filesystem", l.CacheDir, fs, dir),
			"put [cache] dir on a plain filesystem (in a container, a host directory or volume)")
	}
	r.finish(check, is, fmt.Sprintf("kernel %s supports FUSE passthrough; the chunk cache %s can back it", rel, l.CacheDir))
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// releaseAtLeast compares a kernel release ("6.1.0-18-amd64") with
// major.minor.
func releaseAtLeast(rel string, major, minor int) bool {
	var ma, mi int
	if _, err := fmt.Sscanf(rel, "%d.%d", &ma, &mi); err != nil {
		return false
	}
	return ma > major || ma == major && mi >= minor
}

// kernelConfig reads option from the kernel's build configuration
// (/proc/config.gz or /boot/config-RELEASE); known is false when neither
// can be read.
func kernelConfig(rel, option string) (set, known bool) {
	var rd io.Reader
	if data, err := os.ReadFile("/proc/config.gz"); err == nil {
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return false, false
		}
		rd = zr
	} else if data, err := os.ReadFile("/boot/config-" + rel); err == nil {
		rd = bytes.NewReader(data)
	} else {
		return false, false
	}
	sc := bufio.NewScanner(rd)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), option+"="); ok {
			return v == "y" || v == "m", true
		}
	}
	return false, sc.Err() == nil
}

// stackedFSOf returns the stacked filesystem holding dir (or, when it does
// not exist yet, its nearest existing parent) and that directory.
func stackedFSOf(dir string) (string, string) {
	for d := dir; d != "" && d != "."; d = filepath.Dir(d) {
		var st unix.Statfs_t
		if err := unix.Statfs(d, &st); err == nil {
			return stackedFS[int64(st.Type)], d
		}
		if d == "/" {
			break
		}
	}
	return "", ""
}
