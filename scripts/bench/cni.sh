#!/usr/bin/env bash
# ADD/DEL latency of nestbox's bridge + host-local vs the reference plugins
# (/usr/lib/cni), same config, runs interleaved, medians and ratios (ours/reference),
# at 1 pod and with 250 pods already on the bridge; plus peak RSS of one ADD.
# Everything happens inside a node netns created here and removed on exit.
#   scripts/bench/cni.sh [-n RUNS] [--pods N] [--no-masq]
set -euo pipefail

runs=30
preload=250
masq=true
while [ $# -gt 0 ]; do
    case "$1" in
        -n) runs="$2"; shift 2 ;;
        --pods) preload="$2"; shift 2 ;;
        --no-masq) masq=false; shift ;;
        *) echo "usage: $0 [-n RUNS] [--pods N] [--no-masq]" >&2; exit 2 ;;
    esac
done

[ "$(id -u)" = 0 ] || { echo "cni.sh: needs root" >&2; exit 1; }
root=$(cd "$(dirname "$0")/../.." && pwd)
ours_bin="${NESTBOX_CNI_BIN:-$root/target/release/nestbox-cni}"
ref_dir=/usr/lib/cni
[ -x "$ours_bin" ] || { echo "build first: cargo build --release -p nestbox-cni" >&2; exit 1; }
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

# One timed plugin call inside the node netns: prints microseconds.
# The loop itself runs inside the node (a bash started with ip netns exec), so the
# measured time is the plugin process alone (fork+exec+work), as a runtime sees it.
cat > "$work/call.sh" <<'INNER'
#!/usr/bin/env bash
# call.sh impl cmd cid pod -> elapsed microseconds
impl=$1 cmd=$2 cid=$3 pod=$4 work=$WORK
if [ "$impl" = ours ]; then dir=$work/ours; else dir=/usr/lib/cni; fi
netns=/run/netns/$pod
[ -n "$pod" ] || netns=
t0=$EPOCHREALTIME
CNI_COMMAND=$cmd CNI_CONTAINERID=$cid CNI_NETNS=$netns CNI_IFNAME=eth0 CNI_PATH=$dir \
    "$dir/bridge" < "$work/$impl.json" > "$work/out" 2>&1 || { echo "FAIL $impl $cmd: $(cat "$work/out")" >&2; exit 1; }
t1=$EPOCHREALTIME
echo $(( (${t1/./} - ${t0/./}) ))
INNER
chmod +x "$work/call.sh"
export WORK="$work"
innode() { ip netns exec "$node" "$@"; }

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print int((a[NR/2]+a[NR/2+1])/2)}'; }

bench() { # label
    local label=$1 i
    mapfile -t bp < <(newpods $((runs * 2)))
    pods+=("${bp[@]}")
    : > "$work/ours.add"; : > "$work/ours.del"; : > "$work/ref.add"; : > "$work/ref.del"
    # Interleave: ours, reference, ours, ... (each ADD then its DEL).
    for ((i = 0; i < runs; i++)); do
        for impl in ours ref; do
            local pod=${bp[$((i * 2))]}
            [ "$impl" = ref ] && pod=${bp[$((i * 2 + 1))]}
            innode "$work/call.sh" "$impl" ADD "b$i" "$pod" >> "$work/$impl.add"
            innode "$work/call.sh" "$impl" DEL "b$i" "$pod" >> "$work/$impl.del"
        done
    done
    local oa od ra rd
    oa=$(median < "$work/ours.add"); od=$(median < "$work/ours.del")
    ra=$(median < "$work/ref.add"); rd=$(median < "$work/ref.del")
    awk -v l="$label" -v oa="$oa" -v ra="$ra" -v od="$od" -v rd="$rd" 'BEGIN {
        printf "%-22s ADD ours %6.2f ms  ref %6.2f ms  ratio %.3f | DEL ours %6.2f ms  ref %6.2f ms  ratio %.3f\n",
            l, oa / 1000, ra / 1000, oa / ra, od / 1000, rd / 1000, od / rd }'
}

echo "nestbox-cni vs reference (bridge + host-local), $runs interleaved runs each, ipMasq=$masq"
# Warm-up (creates both bridges).
mapfile -t wp < <(newpods 2); pods+=("${wp[@]}")
for impl in ours ref; do
    p=${wp[0]}; [ "$impl" = ref ] && p=${wp[1]}
    innode "$work/call.sh" "$impl" ADD warm "$p" > /dev/null
    innode "$work/call.sh" "$impl" DEL warm "$p" > /dev/null
done
bench "1 pod"

echo "loading $preload pods per implementation..."
mapfile -t lp < <(newpods $((preload * 2))); pods+=("${lp[@]}")
for ((i = 0; i < preload; i++)); do
    innode "$work/call.sh" ours ADD "pre$i" "${lp[$((i * 2))]}" > /dev/null
    innode "$work/call.sh" ref ADD "pre$i" "${lp[$((i * 2 + 1))]}" > /dev/null
done
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
