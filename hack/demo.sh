#!/usr/bin/env bash
# The lazypull demo (`make demo`, as root): runs `python3 -c 'print("hello")'`
# from a Debian + python3 image twice, each time from a cold start (no image,
# no content, no snapshots, no cache, freshly started daemons): once pulled
# normally into containerd's overlayfs snapshotter, once pulled lazily into
# lazypull. Then prints how long each took and what each read from the registry.
#
# Everything runs in a temporary directory with its own registry (plain HTTP
# on 127.0.0.1), containerd 2.x and lazypulld; all of it is stopped and
# unmounted on exit, also on failure or Ctrl-C. Logs are kept when it fails.
#
#   BIN                       where lazypulld and lazypull are (default bin/, `make build`)
#   LAZYPULL_CONTAINERD2_DIR  containerd 2.x binaries (default: hack/build-containerd2.sh's)
#   LAZYPULL_CACHE            where the sample rootfs is cached (see hack/rootfs.sh)
#   LAZYPULL_DEMO_KEEP_LOGS   set to 1 to keep the logs also when the demo succeeds
#   LAZYPULL_DEMO_CONFIG      TOML tables appended to lazypulld's configuration, to try
#                             settings: e.g. $'[fs]\nbackground_fetch = false'
set -euo pipefail

cd "$(dirname "$0")/.."
bin=$(realpath -m "${BIN:-bin}")
registry_bin=/usr/bin/docker-registry
cmd=(python3 -c 'print("hello")')

# ---- output ----------------------------------------------------------------

# The terminal, for the traps: a signal can arrive while a function runs with
# its output redirected to a log.
exec 3>&1 4>&2

if [[ -t 1 ]]; then
	bold=$'\e[1m' dim=$'\e[2m' red=$'\e[31m' green=$'\e[32m' reset=$'\e[0m'
else
	bold='' dim='' red='' green='' reset=''
fi
step=''     # what is being done, for the failure message
started=0 # when it started
say() { printf '%s\n' "$*"; }
# begin STEP: prints "==> STEP ..."; done_ RESULT completes the line.
begin() {
	step=$1 started=$(now)
	printf '%s==>%s %s ...' "$bold" "$reset" "$1"
}
# done_ RESULT [notime]: also says how long the step took, unless told not to.
done_() {
	local took=''
	[[ -n ${2:-} ]] || took=$(awk -v t="$(secs "$started" "$(now)")" 'BEGIN { if (t >= 1) printf " (%.0fs)", t }')
	printf ' %s%s%s%s\n' "$green" "$1" "$reset" "$took"
	step=''
}
die() {
	[[ -z $step ]] || printf '\n'
	printf '%sdemo failed%s%s: %s\n' "$red" "$reset" "${step:+ at \"$step\"}" "$*" >&2
	step=''
	exit 1
}
# tail_of LOG: the end of a log, indented.
tail_of() { tail -n 15 "$1" | sed 's/^/    /'; }
now() { printf '%s' "$EPOCHREALTIME"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
mib() { awk -v n="$1" 'BEGIN { printf "%.1f MiB", n / 1048576 }'; }

# run LOG WHAT CMD...: runs CMD with its output appended to LOG; on failure,
# dies saying WHAT failed, with the end of that output.
run() {
	local log=$1 what=$2 rc=0
	shift 2
	"$@" >>"$log" 2>&1 || rc=$?
	((rc == 0)) || die "$what failed (exit $rc); last lines of $log:
$(tail_of "$log")"
}

# ---- checks ------------------------------------------------------------------

check_requirements() {
	[[ $(id -u) -eq 0 ]] || die "run as root (containerd, runc and FUSE need it)"
	local b
	for b in "$bin/lazypulld" "$bin/lazypull"; do
		[[ -x $b ]] || die "$b is missing: run \`make build\` (or \`make demo\`)"
	done
	for b in "$registry_bin" runc fusermount3 ss; do
		command -v "$b" >/dev/null || die "$b is missing: run \`make deps\` (hack/install-deps.sh)"
	done
	ctrd_bin=$(hack/build-containerd2.sh) || die "no containerd 2.x: run \`make deps\`"
	ctr=$ctrd_bin/ctr
	platform=linux/$(dpkg --print-architecture)
}

# ---- the work directory and everything started in it -------------------------

declare -A pids=() logfile=() # name -> pid and log of the daemons started (each in its own process group)
failed=1

# make_work: the work directory, and the traps that clean it up.
make_work() {
	work=$(mktemp -d /tmp/lp-demo-XXXXXX) # short: unix socket paths are limited to 108 bytes
	logs=$work/logs
	mkdir -p "$logs"
	namespace=lazypull-demo-${work##*-} # also names runc's cgroups: unique, should demos overlap
	trap cleanup EXIT
	trap 'exec 1>&3 2>&4; step=""; printf "\n"; say "demo: interrupted" >&2; exit 130' INT
	trap 'exit 143' TERM
}

# alive PID: the daemon runs (bash reaps its children as they exit).
alive() { kill -0 "$1" 2>/dev/null; }

# start NAME LOG CMD...: starts a daemon in its own session (so that Ctrl-C
# reaches the script, which stops it in order, not the daemon).
start() {
	local name=$1 log=$2
	shift 2
	setsid "$@" >>"$log" 2>&1 </dev/null &
	pids[$name]=$! logfile[$name]=$log
}

# stop NAME: SIGTERM, up to 20 s to exit, then SIGKILL to its process group.
stop() {
	local name=$1 pid=${pids[$1]:-} i
	[[ -n $pid ]] || return 0
	unset "pids[$name]"
	if alive "$pid"; then
		say "$(date +%T.%N) stopping $name" >>"$logs/demo.log"
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 200; i++)); do
			alive "$pid" || break
			sleep 0.1
		done
		if alive "$pid"; then
			say "demo: $name did not exit within 20s of SIGTERM; killing it" >&2
			say "$(date +%T.%N) $name did not exit" >>"$logs/demo.log"
			kill -KILL -- "-$pid" 2>/dev/null || true
		fi
	fi
	wait "$pid" 2>/dev/null || true
	kill -KILL -- "-$pid" 2>/dev/null || true # helpers left in its group
}

# wait_until NAME SECONDS CMD...: until CMD succeeds, while daemon NAME lives.
wait_until() {
	local name=$1 deadline=$((SECONDS + $2))
	shift 2
	until "$@" >/dev/null 2>&1; do
		alive "${pids[$name]}" || die "$name exited at start; last lines of ${logfile[$name]}:
$(tail_of "${logfile[$name]}")"
		((SECONDS < deadline)) || die "$name not ready after $2s; last lines of ${logfile[$name]}:
$(tail_of "${logfile[$name]}")"
		sleep 0.1
	done
}

mounts_under() {
	awk -v d="$1" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo
}

# unmount_under DIR: unmounts everything at or below DIR, newest first;
# busy mounts are retried for 5 s and then detached.
unmount_under() {
	local dir=$1 i try mps
	for ((try = 0; try < 50; try++)); do
		mapfile -t mps < <(mounts_under "$dir")
		((${#mps[@]})) || return 0
		for ((i = ${#mps[@]} - 1; i >= 0; i--)); do umount "${mps[i]}" 2>/dev/null || true; done
		sleep 0.1
	done
	for ((i = ${#mps[@]} - 1; i >= 0; i--)); do umount -l "${mps[i]}" 2>/dev/null || true; done
	mapfile -t mps < <(mounts_under "$dir")
	((${#mps[@]} == 0)) || { say "demo: could not unmount: ${mps[*]}" >&2; return 1; }
}

# kill_shims: kills what is left of the shims of our containerd and the
# containers under them (only after an interrupted `ctr run`).
kill_shims() {
	local p pids_=() c
	for p in /proc/[0-9]*; do
		if tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -q -- "containerd-shim.*-address $ctrd_dir/containerd.sock"; then
			pids_+=("${p#/proc/}")
		fi
	done
	while ((${#pids_[@]})); do
		p=${pids_[0]}
		pids_=("${pids_[@]:1}")
		# shellcheck disable=SC2013 # space-separated pids
		for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do pids_+=("$c"); done
		kill -KILL "$p" 2>/dev/null || true
	done
	for c in "$ctrd_dir"/runc/*/*/state.json; do
		[[ -e $c ]] || continue
		runc --root "$(dirname "$(dirname "$c")")" delete --force "$(basename "$(dirname "$c")")" >/dev/null 2>&1 || true
	done
}

# stop_daemons: containerd (after removing what a cut-short run left), then
# lazypulld, then every mount they left.
stop_daemons() {
	if [[ -n ${pids[containerd]:-} ]] && alive "${pids[containerd]}"; then
		for id in $(ctrc containers list -q 2>/dev/null); do
			ctrc tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
			ctrc tasks delete -f "$id" >/dev/null 2>&1 || true
			ctrc containers delete "$id" >/dev/null 2>&1 || true
		done
	fi
	stop containerd
	[[ -z ${ctrd_dir:-} ]] || kill_shims
	stop lazypulld
	# Its data planes outlive it, serving their layers: stop them too.
	if [[ -f ${work:-}/lazypulld/config.toml ]]; then
		"$bin/lazypulld" --config "$work/lazypulld/config.toml" --stop-data-planes >/dev/null 2>&1 || true
	fi
	# The (empty) cgroups runc made for the namespace and its containers
	# (cgroup v1: in every hierarchy).
	rmdir /sys/fs/cgroup/{,*/}"$namespace"/*/ /sys/fs/cgroup/{,*/}"$namespace"/ 2>/dev/null || true
	unmount_under "$work"
}

# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
	local rc=$?
	set +e
	trap '' INT TERM
	exec 1>&3 2>&4
	((rc == 0)) || failed=1
	[[ -z $step ]] || printf '\n'
	stop_daemons || true
	stop registry
	if unmount_under "$work"; then
		if ((failed)) || [[ ${LAZYPULL_DEMO_KEEP_LOGS:-} == 1 ]]; then
			find "$work" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} + 2>/dev/null || true
			say "demo: logs are in $logs" >&2
		else
			rm -rf "$work"
		fi
	else
		say "demo: left $work in place because something is still mounted there" >&2
	fi
}
# ---- registry -----------------------------------------------------------------

registry_ready() { # GET /v2/ answers 200
	(
		exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
		printf 'GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
		IFS= read -r -t 2 status <&3 && [[ $status == *" 200 "* ]]
	) 2>/dev/null
}

start_registry() {
	local port try i
	mkdir -p "$work/registry"
	for try in 1 2 3; do # the port may be taken between the check and the start
		port=$((20000 + RANDOM % 40000))
		[[ -z $(ss -Htln "sport = :$port") ]] || continue
		cat >"$work/registry/config.yml" <<-EOF
			version: 0.1
			log:
			  level: info
			  formatter: text
			storage:
			  filesystem:
			    rootdirectory: $work/registry/storage
			  maintenance:
			    uploadpurging:
			      enabled: false
			http:
			  addr: 127.0.0.1:$port
		EOF
		start registry "$logs/registry.log" "$registry_bin" serve "$work/registry/config.yml"
		for ((i = 0; i < 100; i++)); do
			registry_ready "$port" && { registry=127.0.0.1:$port; return 0; }
			alive "${pids[registry]}" || break
			sleep 0.1
		done
		stop registry
	done
	die "the registry did not start; see $logs/registry.log"
}

# registry_mark: how many lines its log has now. registry_between FROM TO:
# the requests logged between these two marks, as "COUNT BYTES" (response
# bodies), from its access log (common log format).
registry_mark() { wc -l <"$logs/registry.log"; }
registry_between() {
	awk -F'"' -v from="$1" -v to="$2" 'NR > from && NR <= to && NF >= 7 && $1 ~ /\] $/ {
		split($3, s, " "); n++; b += s[2] } END { printf "%d %d\n", n, b }' "$logs/registry.log"
}

# ---- containerd and lazypulld --------------------------------------------------

ctrc() { "$ctr" --address "$ctrd_dir/containerd.sock" --namespace "$namespace" "$@"; }

# start_daemons PHASE: lazypulld and containerd with empty state, logging
# to $logs/PHASE-*.log.
start_daemons() {
	local phase=$1 lp=$work/lazypulld
	ctrd_dir=$work/containerd
	rm -rf "$lp" "$ctrd_dir"
	mkdir -p "$lp" "$ctrd_dir"
	cat >"$lp/config.toml" <<-EOF
		root = "$lp/root"
		address = "$lp/lazypull.sock"
		log_level = "info"

		[remote]
		hosts_dir = "$work/certs.d"

		${LAZYPULL_DEMO_CONFIG:-}
	EOF
	start lazypulld "$logs/$phase-lazypulld.log" "$bin/lazypulld" --config "$lp/config.toml"
	wait_until lazypulld 30 test -S "$lp/lazypull.sock"

	cat >"$ctrd_dir/config.toml" <<-EOF
		version = 3
		root = "$ctrd_dir/root"
		state = "$ctrd_dir/state"
		disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.podsandbox.controller.v1.podsandbox", "io.containerd.nri.v1.nri"]

		[grpc]
		  address = "$ctrd_dir/containerd.sock"
		[ttrpc]
		  address = "$ctrd_dir/containerd.sock.ttrpc"

		[plugins.'io.containerd.internal.v1.opt']
		  path = "$ctrd_dir/opt"

		# containerd 2.x unpacks pulls only into the snapshotters listed here.
		[[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
		  platform = "$platform"
		  snapshotter = "overlayfs"
		  differ = "walking"
		[[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
		  platform = "$platform"
		  snapshotter = "lazypull"
		  differ = "walking"

		[proxy_plugins.lazypull]
		  type = "snapshot"
		  address = "$lp/lazypull.sock"
		  exports = { root = "$lp/root", enable_remote_snapshot_annotations = "true" }
	EOF
	start containerd "$logs/$phase-containerd.log" env PATH="$ctrd_bin:$PATH" \
		"$ctrd_bin/containerd" --config "$ctrd_dir/config.toml"
	wait_until containerd 30 ctrc version
}

# measure SNAPSHOTTER REF: from a cold start, pulls REF into SNAPSHOTTER and
# runs the command; sets pull_s, run_s, output, and requests and bytes: what
# the registry served from the start of the pull until the command exited.
# Sets mark to where the registry log was when the pull started.
measure() {
	local sn=$1 ref=$2 t0 t1 t2 log=$logs/$1-ctr.log
	stop_daemons
	start_daemons "$sn"
	mark=$(registry_mark)
	t0=$(now)
	run "$log" "ctr image pull" ctrc image pull --hosts-dir "$work/certs.d" --snapshotter "$sn" "$ref"
	t1=$(now)
	run "$log" "ctr run" ctrc run --rm --snapshotter "$sn" --runc-root "$ctrd_dir/runc" --fifo-dir "$ctrd_dir/fifo" \
		"$ref" "demo-$sn" "${cmd[@]}"
	t2=$(now) hello_at=$t2
	read -r requests bytes < <(registry_between "$mark" "$(registry_mark)")
	output=$(tail -n 1 "$log")
	[[ $output == hello ]] || die "the container printed '$output', not 'hello'; see $log"
	pull_s=$(secs "$t0" "$t1") run_s=$(secs "$t1" "$t2")
}

# ---- the demo -----------------------------------------------------------------------

# build_images: the gzip image and its eStargz conversion in a new registry;
# sets gzip_ref and esgz_ref.
build_images() {
	local cache how
	cache=${LAZYPULL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lazypull}/rootfs/python3.tar
	if [[ -s $cache ]]; then
		how=cached
		begin "root filesystem: Debian + python3"
	else
		how=built
		begin "root filesystem: Debian + python3, debootstrap (takes a few minutes, once)"
	fi
	rootfs=$(hack/rootfs.sh python3 python3 2>>"$logs/rootfs.log") ||
		die "hack/rootfs.sh failed; last lines of $logs/rootfs.log:
$(tail_of "$logs/rootfs.log")"
	done_ "$how, $(mib "$(stat -c %s "$rootfs")") ($rootfs)"

	begin "registry"
	start_registry
	mkdir -p "$work/certs.d/$registry"
	# Plain HTTP to the demo registry, for ctr and lazypulld alike.
	printf 'server = "http://%s"\n' "$registry" >"$work/certs.d/$registry/hosts.toml"
	done_ "http://$registry"

	begin "image: a Debian layer and a python3 layer, gzip"
	run "$logs/mkimage.log" "go build ./hack/mkimage" go build -o "$work/mkimage" ./hack/mkimage
	gzip_ref=$("$work/mkimage" -tmp-dir "$work" "$rootfs" "$registry/demo/python3:gzip" 2>>"$logs/mkimage.log") ||
		die "mkimage failed; last lines of $logs/mkimage.log:
$(tail_of "$logs/mkimage.log")"
	done_ "pushed, $(sed -n 's/^mkimage: layers: //p' "$logs/mkimage.log" | tail -n 1)"

	begin "eStargz image: lazypull convert"
	esgz_ref=$("$bin/lazypull" convert --plain-http --tmp-dir "$work" "$gzip_ref" "$registry/demo/python3:estargz" 2>>"$logs/convert.log") ||
		die "lazypull convert failed; last lines of $logs/convert.log:
$(tail_of "$logs/convert.log")"
	done_ "pushed, $(sed -n 's/^converted .*: .* -> \(.*\) eStargz .*/\1/p' "$logs/convert.log" | tail -n 1)"
}

# compare: the cold pull + run with each snapshotter; sets normal, lazy,
# layers, fuse and all_bytes.
compare() {
	begin "overlayfs: cold pull + run"
	measure overlayfs "$gzip_ref"
	normal=("$pull_s" "$run_s" "$requests" "$bytes")
	done_ "$output" notime

	begin "lazypull: cold pull + run"
	measure lazypull "$esgz_ref"
	lazy=("$pull_s" "$run_s" "$requests" "$bytes")
	# Was it lazy? Every layer should be a FUSE mount of lazypulld (the
	# daemons still run; cleanup stops them).
	layers=$(ctrc snapshots --snapshotter lazypull ls 2>/dev/null | awk 'NR > 1 && $NF == "Committed"' | wc -l)
	fuse=$(awk -v d="$work/lazypulld/root/" '$3 ~ /^fuse/ && index($2, d) == 1' /proc/self/mounts | wc -l)
	done_ "$output ($fuse of $layers layers mounted lazily)" notime

	# lazypulld goes on fetching the rest of the layers into its cache in
	# the background ([fs] background_fetch): wait for that too, to show
	# what it adds up to. Until every layer is local, or the registry has
	# served nothing for 3 s (background fetch off), or 2 minutes passed.
	begin "lazypull: background fetch of the rest"
	local i n quiet=0 seen
	seen=$(registry_mark)
	for ((i = 0; i < 1200 && quiet < 30 && $(fully_local) < layers; i++)); do
		sleep 0.1
		n=$(registry_mark)
		((n == seen)) && quiet=$((quiet + 1)) || quiet=0
		seen=$n
	done
	read -r _ all_bytes < <(registry_between "$mark" "$(registry_mark)")
	done_ "$(fully_local) of $layers layers local $(secs "$hello_at" "$(now)")s after hello, $(mib "$all_bytes") from the registry in all" notime
}
fully_local() { grep -c 'msg="layer fully local"' "$logs/lazypull-lazypulld.log" || true; }

total() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a + b }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'; }
row() { printf '%-21s %9s %9s %9s %15s %9s\n' "$@"; }

report() {
	local normal_total lazy_total
	normal_total=$(total "${normal[0]}" "${normal[1]}") lazy_total=$(total "${lazy[0]}" "${lazy[1]}")
	say
	printf '%s' "$bold"
	row "" pull run total "from registry" requests
	printf '%s' "$reset"
	row "overlayfs (gzip)" "${normal[0]}s" "${normal[1]}s" "${normal_total}s" "$(mib "${normal[3]}")" "${normal[2]}"
	row "lazypull (eStargz)" "${lazy[0]}s" "${lazy[1]}s" "${lazy_total}s" "$(mib "${lazy[3]}")" "${lazy[2]}"
	row "lazypull/overlayfs" "$(ratio "${lazy[0]}" "${normal[0]}")" "$(ratio "${lazy[1]}" "${normal[1]}")" \
		"$(ratio "$lazy_total" "$normal_total")" "$(ratio "${lazy[3]}" "${normal[3]}")" "$(ratio "${lazy[2]}" "${normal[2]}")"
	say
	((fuse > 0 && fuse == layers)) ||
		die "only $fuse of the image's $layers layers were mounted lazily; see $logs/lazypull-lazypulld.log"
	say "With lazypull, python3 said hello $(awk -v a="$normal_total" -v b="$lazy_total" 'BEGIN { printf "%.1f", a / b }')x sooner," \
		"after reading $(awk -v a="${lazy[3]}" -v b="${normal[3]}" 'BEGIN { printf "%.0f%%", 100 * a / b }') of the bytes from the registry."
}

main() {
	check_requirements
	make_work
	say "${bold}lazypull demo${reset}: ${cmd[*]:0:2} '${cmd[2]}' in a Debian + python3 image, pulled normally, then lazily"
	say "${dim}work dir $work, removed at exit (logs kept on failure)${reset}"
	build_images
	compare
	report
	failed=0
}

# All of the script is read before main runs: editing it meanwhile (a git
# checkout) cannot change a running demo.
main "$@"; exit
