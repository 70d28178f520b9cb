#!/usr/bin/env bash
# Installs the system packages the integration tests need (containerd 1.6,
# runc, the distribution registry, FUSE, ...). Idempotent: apt is touched only
# when a package is missing. Must run as root; never prompts.
set -euo pipefail

packages=(
	containerd          # containerd 1.6 (Debian 12): ctr, containerd-shim-runc-v2
	runc
	docker-registry     # the distribution registry the tests push to
	libbtrfs-dev        # headers for containerd's btrfs snapshotter when building containerd 2.x
	fuse3               # fusermount3 and /dev/fuse setup for lazypulld
	iproute2
	iptables            # make bench: its link's delay line is an NFQUEUE rule (also its unit test)
	ca-certificates
	git
	gcc                 # cgo (go test -race)
	libc6-dev
)

missing=()
for p in "${packages[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
		missing+=("$p")
	fi
done

if [ "${#missing[@]}" -eq 0 ]; then
	echo "install-deps: all packages present"
	exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: missing ${missing[*]}; run as root" >&2
	exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-deps: installing ${missing[*]}"
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"

