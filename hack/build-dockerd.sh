#!/usr/bin/env bash
# Builds Docker Engine's daemon (dockerd, module github.com/moby/moby/v2) at
# a pinned version into a cache directory and prints that directory. Skips
# the build when the binary is already there. The Docker integration tests
# run it with the containerd image store against the test bed's containerd
# and drive it through the Engine API on its unix socket; no docker CLI is
# needed.
#
#   LAZYPULL_DOCKERD_DIR  where the binary goes
#                         (default ${XDG_CACHE_HOME:-$HOME/.cache}/lazypull/moby-<version>/bin)
set -euo pipefail

version=v2.0.0-beta.24
dir="${LAZYPULL_DOCKERD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lazypull/moby-${version}/bin}"

if [ -x "$dir/dockerd" ]; then
	echo "$dir"
	exit 0
fi

mkdir -p "$dir"
echo "build-dockerd: building dockerd ${version} into $dir (a few minutes)" >&2
# Build outside any module so go.mod of the caller does not interfere.
(
	cd /
	GOBIN="$dir" GOFLAGS=-buildvcs=false GO111MODULE=on CGO_ENABLED=0 \
		go install "github.com/moby/moby/v2/cmd/dockerd@${version}"
) >&2
[ -x "$dir/dockerd" ] || { echo "build-dockerd: build finished but $dir/dockerd is missing" >&2; exit 1; }
echo "$dir"
