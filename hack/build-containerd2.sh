#!/usr/bin/env bash
# Builds containerd, ctr and containerd-shim-runc-v2 at a pinned 2.x version
# into a cache directory and prints that directory. Skips the build when the
# three binaries are already there at the right version.
#
#   LAZYPULL_CONTAINERD2_DIR  where the binaries go
#                             (default ${XDG_CACHE_HOME:-$HOME/.cache}/lazypull/containerd-v2.4.2/bin)
set -euo pipefail

version=v2.4.2
dir="${LAZYPULL_CONTAINERD2_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lazypull/containerd-${version}/bin}"

built() {
	for b in containerd ctr containerd-shim-runc-v2; do
		[ -x "$dir/$b" ] || return 1
	done
	"$dir/containerd" --version 2>/dev/null | grep -q " ${version#v}" || return 1
}

if built; then
	echo "$dir"
	exit 0
fi

mkdir -p "$dir"
echo "build-containerd2: building containerd ${version} into $dir" >&2
# Build outside any module so go.mod of the caller does not interfere.
(
	cd /
	GOBIN="$dir" GOFLAGS=-buildvcs=false GO111MODULE=on \
		go install \
		"github.com/containerd/containerd/v2/cmd/containerd@${version}" \
		"github.com/containerd/containerd/v2/cmd/ctr@${version}" \
		"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@${version}"
) >&2
built || { echo "build-containerd2: build finished but binaries are missing or of the wrong version" >&2; exit 1; }
echo "$dir"
