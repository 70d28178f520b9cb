#!/usr/bin/env bash
# Builds crictl (sigs.k8s.io/cri-tools) at a pinned version into a cache
# directory and prints that directory. Skips the build when the binary is
# already there. The CRI integration tests drive containerd's CRI plugin
# with it, the way kubelet does.
#
#   LAZYPULL_CRICTL_DIR  where the binary goes
#                        (default ${XDG_CACHE_HOME:-$HOME/.cache}/lazypull/cri-tools-<version>/bin)
set -euo pipefail

version=v1.37.0
dir="${LAZYPULL_CRICTL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lazypull/cri-tools-${version}/bin}"

if [ -x "$dir/crictl" ]; then
	echo "$dir"
	exit 0
fi

mkdir -p "$dir"
echo "build-crictl: building crictl ${version} into $dir" >&2
# Build outside any module so go.mod of the caller does not interfere.
(
	cd /
	GOBIN="$dir" GOFLAGS=-buildvcs=false GO111MODULE=on CGO_ENABLED=0 \
		go install -ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=${version}" \
		"sigs.k8s.io/cri-tools/cmd/crictl@${version}"
) >&2
[ -x "$dir/crictl" ] || { echo "build-crictl: build finished but $dir/crictl is missing" >&2; exit 1; }
echo "$dir"
