#!/usr/bin/env bash
# ADD/DEL latency of nestbox's bridge + host-local vs the reference plugins
# (/usr/lib/cni), same config, runs interleaved, medians and ratios (ours/reference),
# at 1 pod and with 250 pods already on the bridge; plus peak RSS of one ADD.
# Everything happens inside a node netns created here and removed on exit.
#   scripts/bench/cni.sh [-n RUNS] [--pods N] [--no-masq] [--shell] [--block N]
# NESTBOX_CNI_BIN picks our binary; NESTBOX_BENCH_REF_DIR replaces /usr/lib/cni as the
# other side (for an A/B run of two builds of ours, say).
set -euo pipefail

runs=30
block=1
harness=go
preload=250
masq=true
while [ $# -gt 0 ]; do
    case "$1" in
        -n) runs="$2"; shift 2 ;;
        --pods) preload="$2"; shift 2 ;;
        --no-masq) masq=false; shift ;;
        --shell) harness=shell; shift ;;
        --block) block="$2"; shift 2 ;;
        *) echo "usage: $0 [-n RUNS] [--pods N] [--no-masq] [--shell] [--block N]" >&2; exit 2 ;;
    esac
done

[ "$(id -u)" = 0 ] || { echo "cni.sh: needs root" >&2; exit 1; }
root=$(cd "$(dirname "$0")/../.." && pwd)
# Ours: the installed build (static musl, scripts/build-cni.sh) unless NESTBOX_CNI_BIN says.
ours_bin="${NESTBOX_CNI_BIN:-$(bash "$root/scripts/build-cni.sh" --quiet | tail -1)}"
ref_dir=${NESTBOX_BENCH_REF_DIR:-/usr/lib/cni}
[ -x "$ours_bin" ] || { echo "cni.sh: $ours_bin not found" >&2; exit 1; }
[ -x "$ref_dir/bridge" ] || { echo "reference plugins missing in $ref_dir" >&2; exit 1; }

tag="nbb$$"
node="${tag}n"
work=$(mktemp -d /tmp/nestbox-cnibench.XXXXXX)
pods=()
cleanup() {
    set +e
    for p in "${pods[@]}"; do echo "netns del $p"; done > "$work/del.batch"
    ip -force -batch "$work/del.batch" >/dev/null 2>&1
    ip netns del "$node" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$node"
ip -n "$node" link set lo up
mkdir -p "$work/ours" "$work/data"
for p in bridge host-local loopback; do ln -s "$ours_bin" "$work/ours/$p"; done

conf() { # impl -> config JSON (same keys for both; own bridge, network and subnet)
    local impl=$1 br subnet
    if [ "$impl" = ours ]; then br=nbbo; subnet=10.210.0.0/16; else br=nbbr; subnet=10.211.0.0/16; fi
    printf '{"cniVersion":"1.0.0","name":"bench-%s","type":"bridge","bridge":"%s","isGateway":true,"ipMasq":%s,"ipam":{"type":"host-local","dataDir":"%s","ranges":[[{"subnet":"%s"}]],"routes":[{"dst":"0.0.0.0/0"}]}}' \
        "$impl" "$br" "$masq" "$work/data" "$subnet"
}
conf ours > "$work/ours.json"
conf ref > "$work/ref.json"

newpods() { # count -> names on stdout, netns created in one batch
    local n=$1 names=() i
    for ((i = 0; i < n; i++)); do names+=("${tag}p$RANDOM$RANDOM"); done
    printf 'netns add %s\n' "${names[@]}" > "$work/add.batch"
    ip -batch "$work/add.batch"
    printf '%s\n' "${names[@]}"
}

# The timer: scripts/bench/cni-exec.go starts each plugin the way libcni does (Go's
# os/exec, config on stdin, output captured) and times it from start to exit: the
# latency a runtime sees. --shell times each call around a bash child instead (bash's
# fork of itself adds ~0.3 ms to both sides; kept to compare with earlier runs).
# Either way the timer runs inside the node netns.
if [ "$harness" = go ]; then
    go=$(command -v go || true)
    for g in /usr/lib/go/bin/go /usr/lib/go-1.*/bin/go; do [ -n "$go" ] || { [ -x "$g" ] && go=$g; }; done
    if [ -z "$go" ]; then
        echo "installing golang-go for the timer (scripts/bench/cni-exec.go)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null
        go=$(command -v go)
    fi
    GO111MODULE=off "$go" build -o "$work/cni-exec" "$root/scripts/bench/cni-exec.go"
fi
cat > "$work/call.sh" <<'INNER'
#!/usr/bin/env bash
# call.sh PLAN: run the plan's calls, each timed around a bash child (LABEL MICROSECONDS).
while read -r label plugin conf cmd cid netns ifname path; do
    [ "$netns" = - ] && netns=
    t0=$EPOCHREALTIME
    CNI_COMMAND=$cmd CNI_CONTAINERID=$cid CNI_NETNS=$netns CNI_IFNAME=$ifname CNI_PATH=$path \
        "$plugin" < "$conf" > "$WORK/out" 2>&1 || { echo "FAIL $label $cmd: $(cat "$WORK/out")" >&2; exit 1; }
    t1=$EPOCHREALTIME
    echo "$label $(( ${t1/./} - ${t0/./} ))"
done < "$1"
INNER
chmod +x "$work/call.sh"
export WORK="$work"
innode() { ip netns exec "$node" "$@"; }

# plan_line LABEL IMPL CMD CID POD -> one line of a plan
plan_line() {
    local dir=$work/ours
    [ "$2" = ref ] && dir=$ref_dir
    echo "$1 $dir/bridge $work/$2.json $3 $4 /run/netns/$5 eth0 $dir"
}
run_plan() { # plan file -> results on stdout
    if [ "$harness" = go ]; then innode "$work/cni-exec" "$1"; else innode "$work/call.sh" "$1"; fi
}

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print int((a[NR/2]+a[NR/2+1])/2)}'; }

bench() { # label
    local label=$1 i impl pod
    mapfile -t bp < <(newpods $((runs * 2)))
    pods+=("${bp[@]}")
    # Interleaved in blocks of $block: ours x block, reference x block, ours ... (each
    # ADD then its DEL).
    local b j
    for ((b = 0; b < runs; b += block)); do
        for impl in ours ref; do
            for ((j = b; j < b + block && j < runs; j++)); do
                pod=${bp[$((j * 2))]}
                [ "$impl" = ref ] && pod=${bp[$((j * 2 + 1))]}
                plan_line "$impl.add" "$impl" ADD "b$j" "$pod"
                plan_line "$impl.del" "$impl" DEL "b$j" "$pod"
            done
        done
    done > "$work/plan"
    run_plan "$work/plan" > "$work/times"
    local oa od ra rd
    oa=$(awk '$1 == "ours.add" { print $2 }' "$work/times" | median)
    od=$(awk '$1 == "ours.del" { print $2 }' "$work/times" | median)
    ra=$(awk '$1 == "ref.add" { print $2 }' "$work/times" | median)
    rd=$(awk '$1 == "ref.del" { print $2 }' "$work/times" | median)
    awk -v l="$label" -v oa="$oa" -v ra="$ra" -v od="$od" -v rd="$rd" 'BEGIN {
        printf "%-22s ADD ours %6.2f ms  ref %6.2f ms  ratio %.3f | DEL ours %6.2f ms  ref %6.2f ms  ratio %.3f\n",
            l, oa / 1000, ra / 1000, oa / ra, od / 1000, rd / 1000, od / rd }'
}

echo "nestbox-cni vs reference (bridge + host-local), $runs interleaved runs each, ipMasq=$masq, timer: $harness"
echo "ours: $ours_bin"
# Warm-up (creates both bridges).
mapfile -t wp < <(newpods 2); pods+=("${wp[@]}")
{
    plan_line warm ours ADD warm "${wp[0]}"; plan_line warm ours DEL warm "${wp[0]}"
    plan_line warm ref ADD warm "${wp[1]}"; plan_line warm ref DEL warm "${wp[1]}"
} > "$work/plan"
run_plan "$work/plan" > /dev/null
bench "1 pod"

echo "loading $preload pods per implementation..."
mapfile -t lp < <(newpods $((preload * 2))); pods+=("${lp[@]}")
for ((i = 0; i < preload; i++)); do
    plan_line pre ours ADD "pre$i" "${lp[$((i * 2))]}"
    plan_line pre ref ADD "pre$i" "${lp[$((i * 2 + 1))]}"
done > "$work/plan"
run_plan "$work/plan" > /dev/null
# The new pods' own kernel timers (DAD, router solicitations at 0, 4 and 8 s, MLD
# reports) run for a few seconds after they come up: let them pass first.
sleep 10
bench "$preload pods on bridge"

# Peak RSS of one ADD (KiB), measured inside the node.
mapfile -t rp < <(newpods 2); pods+=("${rp[@]}")
for impl in ours ref; do
    p=${rp[0]}; dir=$work/ours
    [ "$impl" = ref ] && { p=${rp[1]}; dir=$ref_dir; }
    rss=$(innode env CNI_COMMAND=ADD CNI_CONTAINERID=rss CNI_NETNS=/run/netns/$p CNI_IFNAME=eth0 CNI_PATH=$dir \
        /usr/bin/time -f '%M' "$dir/bridge" < "$work/$impl.json" 2>&1 >/dev/null | tail -1)
    printf 'peak RSS of one ADD: %-4s %6d KiB\n' "$impl" "$rss"
done
