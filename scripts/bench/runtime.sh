#!/usr/bin/env bash
# Benchmark: nestbox vs runc vs crun on the same busybox bundle running /bin/true.
#   - `run` wall time, interleaved rounds (nestbox, runc, crun in turn each round)
#   - create + start + delete wall time, interleaved the same way
#   - exec latency: `exec ID /bin/true` into a running container (one per runtime, started
#     once), interleaved the same way
#   - peak RSS of `run` (/usr/bin/time -v)
# Prints median ms, min-max, and the ratios nestbox/crun and nestbox/runc.
#
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
    cargo build --release -p nestbox-runtime >&2
    exec unshare -m env NESTBOX_BENCH_INNER=1 bash "$0" "$ROUNDS"
fi

# Inside the private mount namespace.
mount --make-rprivate /
umount /sys/fs/cgroup/unified 2>/dev/null || true

NESTBOX="$PWD/target/release/nestbox"
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

now_us() { local t=${EPOCHREALTIME/./}; echo "$t"; }

# stats FILE -> "median min max" in ms (values in the file are microseconds)
stats() {
    sort -n "$1" | awk '{v[NR]=$1} END {
        m = (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2;
        printf "%.1f %.1f %.1f\n", m/1000, v[1]/1000, v[NR]/1000 }'
}

bench_run() { # runtime id
    local rt=$1 id=$2
    "${BIN[$rt]}" --root "$WORK/root-$rt" run --bundle "$BUNDLE" "$id" </dev/null >/dev/null
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

for rt in "${RUNTIMES[@]}"; do
    : > "$WORK/run-$rt"; : > "$WORK/life-$rt"; : > "$WORK/exec-$rt"
    bench_run "$rt" "warm-$rt" # warm caches
    "${BIN[$rt]}" --root "$WORK/root-$rt" create --bundle "$SLEEPER" "exec-$rt" </dev/null >/dev/null 2>&1
    "${BIN[$rt]}" --root "$WORK/root-$rt" start "exec-$rt"
    bench_exec "$rt"
done

for ((i = 0; i < ROUNDS; i++)); do
    for rt in "${RUNTIMES[@]}"; do
        t0=$(now_us); bench_run "$rt" "r$i-$rt"; t1=$(now_us)
        echo $((t1 - t0)) >> "$WORK/run-$rt"
    done
    for rt in "${RUNTIMES[@]}"; do
        t0=$(now_us); bench_lifecycle "$rt" "l$i-$rt"; t1=$(now_us)
        echo $((t1 - t0)) >> "$WORK/life-$rt"
    done
    for rt in "${RUNTIMES[@]}"; do
        t0=$(now_us); bench_exec "$rt"; t1=$(now_us)
        echo $((t1 - t0)) >> "$WORK/exec-$rt"
    done
done

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
report run "run /bin/true"
report life "create + start + delete"
report exec "exec /bin/true into a running container"

echo "== peak RSS of run (/usr/bin/time -v, max of 5)"
for rt in "${RUNTIMES[@]}"; do
    max=0
    for i in 1 2 3 4 5; do
        kb=$(/usr/bin/time -v "${BIN[$rt]}" --root "$WORK/root-$rt" run --bundle "$BUNDLE" "rss$i-$rt" \
            </dev/null 2>&1 >/dev/null | awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}')
        ((kb > max)) && max=$kb
    done
    printf "%-8s %6.1f MB\n" "$rt" "$(awk -v k="$max" 'BEGIN { print k/1024 }')"
done
