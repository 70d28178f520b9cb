package snapshotter

import (
	"os"
	"path/filepath"
)

// overlayOptions returns the options added to every overlay mount, each
// if the kernel's overlayfs has it (its module parameter of the same name
// tells; params is the directory of those parameters):
//
//   - index=off: lowerdirs on FUSE cannot always be indexed by file
//     handle, and a snapshotter never needs the overlay index.
//   - redirect_dir=nofollow and metacopy=off: overlayfs trusts the
//     trusted.overlay.* xattrs of its lower layers, and an image's layer
//     is image content: one pulled the normal way is unpacked by containerd
//     with whatever xattrs its tar holds, trusted.overlay.* included (a
//     lazily mounted one never serves them). A redirect would merge a
//     directory with another of the layers below, a metacopy file take its
//     content from another file; with these options overlayfs refuses
//     (EPERM) to follow either, whatever the kernel's defaults. Linux 4.15
//     brought nofollow, with the redirect_always_follow parameter, and 4.19
//     metacopy. A directory rename in a container then copies, as it does
//     under the default of most kernels (redirect_dir off).
func overlayOptions(params string) []string {
	var opts []string
	has := func(p string) bool {
		_, err := os.Stat(filepath.Join(params, p))
		return err == nil
	}
	if has("index") {
		opts = append(opts, "index=off")
	}
	if has("redirect_always_follow") {
		opts = append(opts, "redirect_dir=nofollow")
	}
	if has("metacopy") {
		opts = append(opts, "metacopy=off")
	}
	return opts
}
