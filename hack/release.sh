#!/usr/bin/env bash
# Builds release archives: static lazypulld and lazypull binaries for each
# architecture, with the systemd unit, the example configuration, the README
# and the license, and a SHA256SUMS file beside them.
#
#   hack/release.sh [OUTDIR]        (default _output/release)
#
#   VERSION  the version the binaries report (default: git describe)
#   ARCHES   architectures to build (default: "amd64 arm64")
set -euo pipefail
cd "$(dirname "$0")/.."

out="${1:-_output/release}"
version="${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}"
arches="${ARCHES:-amd64 arm64}"

mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

sums=()
for arch in $arches; do
	name="lazypull-${version}-linux-${arch}"
	dir="$work/$name"
	mkdir -p "$dir/bin" "$dir/contrib/systemd" "$dir/config"
	# CGO off: static binaries that run on any Linux distribution; -trimpath
	# so that the binaries do not carry the build machine's paths.
	CGO_ENABLED=0 GOOS=linux GOARCH="$arch" go build -trimpath \
		-ldflags "-s -w -X main.version=${version}" \
		-o "$dir/bin/" ./cmd/lazypulld ./cmd/lazypull
	cp contrib/systemd/lazypulld.service "$dir/contrib/systemd/"
	cp config/example.toml "$dir/config/"
	cp README.md LICENSE "$dir/"
	tar -C "$work" --owner=0 --group=0 --numeric-owner -czf "$out/$name.tar.gz" "$name"
	sums+=("$name.tar.gz")
	echo "release: $out/$name.tar.gz" >&2
done
(cd "$out" && sha256sum "${sums[@]}" > SHA256SUMS)
