#!/usr/bin/env bash
# Builds a Debian root filesystem with the given packages and prints the path of a tar of it.
#
#   [ROOTFS_SETUP='shell commands'] hack/rootfs.sh NAME [PACKAGE...]
#
# ROOTFS_SETUP, when set, runs with sh in the root filesystem (chroot) once the packages are
# installed, e.g. to create the data a benchmark workload reads. The tar is cached in ${LAZYPULL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lazypull}/rootfs/NAME.tar
# and rebuilt only when missing. Packages come from the Debian mirror this machine's apt is
# configured with (debootstrap, minbase variant, the running Debian release).
set -euo pipefail

name=${1:?usage: hack/rootfs.sh NAME [PACKAGE...]}
shift
cache=${LAZYPULL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lazypull}/rootfs
out=$cache/$name.tar
if [[ -s $out ]]; then
	echo "$out"
	exit 0
fi

if ! command -v debootstrap >/dev/null; then
	apt-get update -q >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2
fi

# The mirror apt already uses (deb822 .sources files first, then sources.list).
mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
if [[ -z $mirror ]]; then
	mirror=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' \
		/etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
fi
[[ -n $mirror ]] || { echo "rootfs: no Debian mirror found in apt's sources" >&2; exit 1; }
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:?}")

mkdir -p "$cache"
work=$(mktemp -d "$cache/.build-$name.XXXXXX")
trap 'rm -rf "$work"' EXIT
include=$(IFS=,; echo "$*")
echo "rootfs: debootstrap $suite ${include:+with $include} ..." >&2
debootstrap --variant=minbase ${include:+--include="$include"} "$suite" "$work/root" "$mirror" >"$work/log" 2>&1 ||
	{ tail -20 "$work/log" >&2; exit 1; }
if [[ -n ${ROOTFS_SETUP:-} ]]; then
	echo "rootfs: setup in $name ..." >&2
	chroot "$work/root" /bin/sh -ec "$ROOTFS_SETUP" >"$work/log" 2>&1 || { tail -20 "$work/log" >&2; exit 1; }
fi
# Drop what a container image does not ship: apt lists and caches, logs (the files: a server's
# log directory stays, or it would not start).
rm -rf "$work/root/var/cache/apt/"*.bin "$work/root/var/cache/apt/archives/"*.deb \
	"$work/root/var/lib/apt/lists/"*
find "$work/root/var/log" -type f -delete
tar --numeric-owner --xattrs -C "$work/root" -cf "$work/out.tar" .
mv "$work/out.tar" "$out"
echo "$out"
