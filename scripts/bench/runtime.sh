#!/usr/bin/env bash
# Benchmark: nestbox vs runc vs crun on the same busybox bundle running /bin/true.
#   - `run` wall time, interleaved rounds (each round runs every runtime in turn, the order
#     rotating from round to round)
#   - create + start + delete wall time, interleaved the same way
#   - exec latency: `exec ID /bin/true` into a running container (one per runtime, started
#     once), interleaved the same way
#   - `run` with a full default seccomp profile: containers-common's (podman's, moby's
#     format) turned into an OCI profile for x86_64 and runc spec's capabilities, as
#     docker/podman would pass it (runc spec's default config has no seccomp section)
#   - `run` of a container with a user namespace (uid/gid 0-65535 mapped to 100000-165535)
#   - peak RSS of `run` (/usr/bin/time -v)
# Prints median ms, min-max, the ratios nestbox/crun and nestbox/runc, and the load average
# before and after (the numbers mean little on a busy machine).
#
# nestbox is the installed build (scripts/build-runtime.sh: static, `runtime` profile).
# crun refuses this VM's hybrid cgroups (cgroup2 at /sys/fs/cgroup/unified), so the whole
# benchmark runs inside one private mount namespace where that mount is removed: all three
# runtimes see the same (v1) cgroup layout. A benchmark, not a test: numbers only.
#
# Usage: scripts/bench/runtime.sh [ROUNDS]   (as root; default 30 rounds)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS="${1:-30}"

if [[ "${NESTBOX_BENCH_INNER:-}" != 1 ]]; then
    [[ $(id -u) == 0 ]] || { echo "run as root" >&2; exit 1; }
    for c in runc crun busybox jq /usr/bin/time; do
        command -v "$c" >/dev/null || { echo "missing: $c" >&2; exit 1; }
    done
    [[ -f /usr/share/containers/seccomp.json ]] ||
        { echo "missing: /usr/share/containers/seccomp.json (containers-common)" >&2; exit 1; }
    dir=$(bash scripts/build-runtime.sh | tail -1)
    exec unshare -m env NESTBOX_BENCH_INNER=1 NESTBOX_BENCH_RT="$dir/nestbox" bash "$0" "$ROUNDS"
fi

# Inside the private mount namespace.
mount --make-rprivate /
umount /sys/fs/cgroup/unified 2>/dev/null || true

NESTBOX="$NESTBOX_BENCH_RT"
WORK="$(mktemp -d /tmp/nestbox-bench.XXXXXX)"
declare -A BIN=([nestbox]="$NESTBOX" [runc]="$(command -v runc)" [crun]="$(command -v crun)")
RUNTIMES=(nestbox runc crun)
cleanup() {
    for rt in "${RUNTIMES[@]}"; do
        "${BIN[$rt]}" --root "$WORK/root-$rt" delete --force "exec-$rt" >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
BUNDLE="$WORK/bundle"
mkdir -p "$BUNDLE/rootfs"/{bin,proc,sys,dev,tmp,etc}
cp "$(command -v busybox)" "$BUNDLE/rootfs/bin/busybox"
ln -s busybox "$BUNDLE/rootfs/bin/true"
ln -s busybox "$BUNDLE/rootfs/bin/sleep"
(cd "$BUNDLE" && runc spec && jq '.process.terminal=false | .process.args=["/bin/true"]' config.json > c && mv c config.json)
# The exec target: the same rootfs, running sleep.
SLEEPER="$WORK/sleeper"
mkdir -p "$SLEEPER"
jq --arg root "$BUNDLE/rootfs" '.root.path=$root | .process.args=["/bin/sleep","100000"]' \
    "$BUNDLE/config.json" > "$SLEEPER/config.json"
# The full default seccomp profile: rules for amd64 whose capability conditions hold for
# the spec's capabilities, as docker/podman expand the moby-format profile.
SECCOMP="$WORK/seccomp"
mkdir -p "$SECCOMP"
jq --argjson caps "$(jq -c .process.capabilities.bounding "$BUNDLE/config.json")" '
    {defaultAction, defaultErrnoRet: (.defaultErrnoRet // 1),
     architectures: ([.archMap[] | select(.architecture == "SCMP_ARCH_X86_64")
                      | [.architecture] + .subArchitectures] | first),
     syscalls: [.syscalls[]
       | select((.includes.arches // []) as $a | ($a | length) == 0 or ($a | index("amd64")))
       | select((.includes.caps // []) as $c | all($c[]; . as $x | $caps | index($x)))
       | select((.excludes.arches // []) | index("amd64") | not)
       | select((.excludes.caps // []) as $c | any($c[]; . as $x | $caps | index($x)) | not)
       | {names, action} + (if .args then {args} else {} end)
         + (if .errnoRet then {errnoRet} else {} end)]}' \
    /usr/share/containers/seccomp.json > "$WORK/profile.json"
jq --arg root "$BUNDLE/rootfs" --slurpfile p "$WORK/profile.json" \
    '.root.path=$root | .linux.seccomp=$p[0]' "$BUNDLE/config.json" > "$SECCOMP/config.json"
# A user namespace: host ids 100000-165535. No cgroup mount (a cgroup v1 hierarchy cannot
# be mounted from a user namespace without a cgroup namespace).
USERNS="$WORK/userns"
mkdir -p "$USERNS"
jq --arg root "$BUNDLE/rootfs" '.root.path=$root
    | .linux.namespaces += [{"type": "user"}]
    | .linux.uidMappings=[{"containerID": 0, "hostID": 100000, "size": 65536}]
    | .linux.gidMappings=[{"containerID": 0, "hostID": 100000, "size": 65536}]
    | .mounts |= map(select(.destination != "/sys/fs/cgroup"))' \
    "$BUNDLE/config.json" > "$USERNS/config.json"
chmod 755 "$WORK"

now_us() { local t=${EPOCHREALTIME/./}; echo "$t"; }

# stats FILE -> "median min max" in ms (values in the file are microseconds)
stats() {
    sort -n "$1" | awk '{v[NR]=$1} END {
        m = (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2;
        printf "%.1f %.1f %.1f\n", m/1000, v[1]/1000, v[NR]/1000 }'
}

bench_run() { # runtime id [bundle]
    local rt=$1 id=$2 bundle=${3:-$BUNDLE}
    "${BIN[$rt]}" --root "$WORK/root-$rt" run --bundle "$bundle" "$id" </dev/null >/dev/null
}

bench_lifecycle() { # runtime id
    local rt=$1 id=$2 b="${BIN[$rt]}" r="$WORK/root-$rt"
    "$b" --root "$r" create --bundle "$BUNDLE" "$id" </dev/null >/dev/null 2>&1
    "$b" --root "$r" start "$id"
    "$b" --root "$r" delete --force "$id"
}

bench_exec() { # runtime
    local rt=$1
    "${BIN[$rt]}" --root "$WORK/root-$rt" exec "exec-$rt" /bin/true </dev/null >/dev/null
}

KINDS=(run life exec seccomp userns)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for rt in "${RUNTIMES[@]}"; do
    for kind in "${KINDS[@]}"; do : > "$WORK/$kind-$rt"; done
    bench_run "$rt" "warm-$rt" # warm caches
    bench_run "$rt" "warm-sc-$rt" "$SECCOMP"
    bench_run "$rt" "warm-us-$rt" "$USERNS"
    "${BIN[$rt]}" --root "$WORK/root-$rt" create --bundle "$SLEEPER" "exec-$rt" </dev/null >/dev/null 2>&1
    "${BIN[$rt]}" --root "$WORK/root-$rt" start "exec-$rt"
    bench_exec "$rt"
done

# One measurement: KIND RUNTIME COMMAND...; appends the wall time in microseconds.
measure() {
    local kind=$1 rt=$2 t0 t1
    shift 2
    t0=$(now_us); "$@"; t1=$(now_us)
    echo $((t1 - t0)) >> "$WORK/$kind-$rt"
}

N=${#RUNTIMES[@]}
for ((i = 0; i < ROUNDS; i++)); do
    # This round's order: the runtimes rotated by i (no runtime always goes first).
    order=()
    for ((k = 0; k < N; k++)); do order+=("${RUNTIMES[$(((i + k) % N))]}"); done
    for rt in "${order[@]}"; do measure run "$rt" bench_run "$rt" "r$i-$rt"; done
    for rt in "${order[@]}"; do measure life "$rt" bench_lifecycle "$rt" "l$i-$rt"; done
    for rt in "${order[@]}"; do measure exec "$rt" bench_exec "$rt"; done
    for rt in "${order[@]}"; do measure seccomp "$rt" bench_run "$rt" "s$i-$rt" "$SECCOMP"; done
    for rt in "${order[@]}"; do measure userns "$rt" bench_run "$rt" "u$i-$rt" "$USERNS"; done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

declare -A MED
report() { # kind title
    local kind=$1 title=$2
    echo "== $title ($ROUNDS rounds, interleaved)"
    printf "%-8s %10s %16s\n" runtime "median ms" "min-max ms"
    for rt in "${RUNTIMES[@]}"; do
        read -r med min max < <(stats "$WORK/$kind-$rt")
        MED[$kind-$rt]=$med
        printf "%-8s %10s %16s\n" "$rt" "$med" "$min-$max"
    done
    awk -v n="${MED[$kind-nestbox]}" -v c="${MED[$kind-crun]}" -v r="${MED[$kind-runc]}" \
        'BEGIN { printf "ratio nestbox/crun %.2f, nestbox/runc %.2f\n", n/c, n/r }'
}
echo "== load average before: $LOAD_BEFORE, after: $LOAD_AFTER ($(nproc) CPUs)"
report run "run /bin/true"
report life "create + start + delete"
report exec "exec /bin/true into a running container"
report seccomp "run /bin/true with the full default seccomp profile"
report userns "run /bin/true with a user namespace"

echo "== peak RSS of run (/usr/bin/time -v, max of 5)"
declare -A RSS
for rt in "${RUNTIMES[@]}"; do
    max=0
    for i in 1 2 3 4 5; do
        kb=$(/usr/bin/time -v "${BIN[$rt]}" --root "$WORK/root-$rt" run --bundle "$BUNDLE" "rss$i-$rt" \
            </dev/null 2>&1 >/dev/null | awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}')
        ((kb > max)) && max=$kb
    done
    RSS[$rt]=$max
    printf "%-8s %6.1f MB\n" "$rt" "$(awk -v k="$max" 'BEGIN { print k/1024 }')"
done
awk -v n="${RSS[nestbox]}" -v c="${RSS[crun]}" -v r="${RSS[runc]}" \
    'BEGIN { printf "ratio nestbox/crun %.2f, nestbox/runc %.2f\n", n/c, n/r }'
