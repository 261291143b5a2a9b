#!/usr/bin/env bash
# nestbox-netdiag overhead and speed, all inside throw-away namespaces (two nodes on an
# underlay switch, etcd, nestbox-overlayd --backend vxlan, pods through nestbox-vxlan):
#  - iperf3 pod-to-pod throughput (single stream, median of RUNS) with nothing attached
#    vs with `trace --pod` and `drops --pod` of the sending pod attached on its node,
#    runs interleaved (off, on, off, on, ...); prints the ratio (goal: >= 0.95).
#  - the time `doctor` takes for one pod, and `doctor --all`, on a node with PODS pods
#    (hyperfine, median).
#   scripts/bench/netdiag.sh [-n RUNS] [-t SECONDS] [-p PODS]
set -euo pipefail

runs=5
secs=4
npods=100
while [ $# -gt 0 ]; do
    case "$1" in
        -n) runs="$2"; shift 2 ;;
        -t) secs="$2"; shift 2 ;;
        -p) npods="$2"; shift 2 ;;
        *) echo "usage: $0 [-n RUNS] [-t SECONDS] [-p PODS]" >&2; exit 2 ;;
    esac
done

[ "$(id -u)" = 0 ] || { echo "netdiag.sh: needs root" >&2; exit 1; }
for c in ip etcd curl iperf3 jq base64 hyperfine; do
    command -v "$c" > /dev/null || { echo "netdiag.sh: $c missing (scripts/deps.sh installs it)" >&2; exit 1; }
done
root=$(cd "$(dirname "$0")/../.." && pwd)
rel="${NESTBOX_BIN_DIR:-$root/target/release}"
for b in nestbox-overlayd nestbox-cni nestbox-netdiag; do
    [ -x "$rel/$b" ] || { echo "build first: cargo build --release -p nestbox-overlayd -p nestbox-cni -p nestbox-netdiag" >&2; exit 1; }
done
nd="$rel/nestbox-netdiag"

tag="nbd$$"
work=$(mktemp -d /tmp/nestbox-ndbench.XXXXXX)
mkdir -p "$work/bin" "$work/cache/results" "$work/nestlet"
for p in nestbox-bridge nestbox-host-local nestbox-vxlan; do ln -s "$rel/nestbox-cni" "$work/bin/$p"; done
ETCD_IP=192.168.77.2
URL="http://$ETCD_IP:2379"
pids=()
tracers=()

teardown() {
    set +e
    for p in "${tracers[@]}" "${pids[@]}"; do kill "$p" 2>/dev/null; done
    for f in "$work"/iperf.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
    for p in "${tracers[@]}" "${pids[@]}"; do wait "$p" 2>/dev/null; done
    for ns in $(ip netns list | awk '{print $1}' | grep "^$tag"); do ip netns del "$ns"; done
    set -e
}
trap 'teardown; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
b64() { printf '%s' "$1" | base64 -w0; }

ip netns add "${tag}sw"
ip -n "${tag}sw" link add br0 type bridge
ip -n "${tag}sw" link set br0 up
i=1
for n in et n1 n2; do
    ip netns add "${tag}$n"
    ip -n "${tag}$n" link set lo up
    ip -n "${tag}sw" link add "p$n" type veth peer name eth0 netns "${tag}$n"
    ip -n "${tag}sw" link set "p$n" master br0 up
    ip -n "${tag}$n" link set eth0 up
    if [ "$n" = et ]; then
        ip -n "${tag}$n" addr add "$ETCD_IP/24" dev eth0
    else
        ip -n "${tag}$n" addr add "192.168.77.1$i/24" dev eth0
        i=$((i + 1))
    fi
done
ip netns exec "${tag}et" etcd --data-dir "$work/etcd" --listen-client-urls "$URL" --advertise-client-urls "$URL" \
    --listen-peer-urls http://127.0.0.1:2380 > "$work/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do ip netns exec "${tag}et" curl -sf -m 1 "$URL/health" > /dev/null 2>&1 && break; sleep 0.1; done
ip netns exec "${tag}et" curl -sS -m 5 -X POST "$URL/v3/kv/put" \
    -d "{\"key\":\"$(b64 /coreos.com/network/config)\",\"value\":\"$(b64 '{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}')\"}" > /dev/null
for n in n1 n2; do
    "$rel/nestbox-overlayd" --netns "/run/netns/${tag}$n" --iface eth0 --etcd-endpoints "$URL" \
        --backend vxlan --subnet-file "$work/$n.env" --ip-masq >> "$work/$n.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 200); do [ -s "$work/$n.env" ] && break; sleep 0.05; done
done

# A pod through our overlay plugin, with the libcni cache entry a runtime would write.
pod() { # node index -> pod IP
    local node=$1 k=$2 p="${tag}p$1x$2"
    ip netns add "$p"
    ip -n "$p" link set lo up
    local conf
    conf=$(printf '{"cniVersion":"1.0.0","name":"ndbench","type":"nestbox-vxlan","subnetFile":"%s","dataDir":"%s","ipam":{"dataDir":"%s"},"delegate":{"hairpinMode":true}}' \
        "$work/$node.env" "$work/$node.flannel" "$work/$node.ipam")
    local res
    res=$(echo "$conf" | ip netns exec "${tag}$node" env CNI_COMMAND=ADD CNI_CONTAINERID="c$node$k" CNI_NETNS="/run/netns/$p" \
        CNI_IFNAME=eth0 CNI_PATH="$work/bin" "$work/bin/nestbox-vxlan" 2>> "$work/cni.log")
    if [ "$node" = n1 ]; then
        jq -n --arg id "c$node$k" --arg conf "$(b64 "$conf")" --arg name "p$k" --argjson res "$res" \
            '{kind:"cniCacheV1",containerId:$id,ifName:"eth0",networkName:"ndbench",config:$conf,
              cniArgs:[["K8S_POD_NAMESPACE","bench"],["K8S_POD_NAME",$name]],result:$res}' \
            > "$work/cache/results/ndbench-c$node$k-eth0"
    fi
    echo "$res" | jq -r '.ips[0].address' | cut -d/ -f1
}
a=$(pod n1 0)
b=$(pod n2 0)
for _ in $(seq 100); do ip netns exec "${tag}pn1x0" ping -c1 -W1 "$b" > /dev/null 2>&1 && break; sleep 0.2; done
ip netns exec "${tag}pn2x0" iperf3 -s -D -I "$work/iperf.pid" > /dev/null
sleep 0.5

ndargs=(--node-netns "/run/netns/${tag}n1" --cni-cache-dir "$work/cache" --nestlet-root "$work/nestlet")

one_iperf() {
    local r
    for _ in 1 2; do
        r=$(ip netns exec "${tag}pn1x0" iperf3 -c "$b" -t "$secs" -J 2>/dev/null | jq -r '.end.sum_received.bits_per_second // empty')
        [ -n "$r" ] && { echo "$r" | awk '{printf "%.3f\n", $1 / 1e9}'; return; }
        sleep 1
    done
    echo 0
}
attach() {
    # Started directly (not through a function's subshell): the pids are theirs, so the
    # SIGINT of detach reaches them.
    "$nd" "${ndargs[@]}" trace --pod bench/p0 --quiet > "$work/trace.out" 2> "$work/trace.err" &
    tracers+=($!)
    "$nd" "${ndargs[@]}" drops --pod bench/p0 > "$work/drops.out" 2> "$work/drops.err" &
    tracers+=($!)
    for _ in $(seq 200); do
        grep -q tracing "$work/trace.err" 2>/dev/null && grep -q watching "$work/drops.err" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "trace/drops did not attach:" >&2; cat "$work/trace.err" "$work/drops.err" >&2; exit 1
}
detach() {
    for p in "${tracers[@]}"; do kill -INT "$p" 2>/dev/null; done
    for p in "${tracers[@]}"; do wait "$p" 2>/dev/null || true; done
    tracers=()
}

echo "== iperf3 pod-to-pod over VXLAN, ${secs}s x $runs, trace + drops attached vs not"
: > "$work/off"; : > "$work/on"
for _ in $(seq "$runs"); do
    one_iperf >> "$work/off"
    attach
    one_iperf >> "$work/on"
    detach
done
off=$(median < "$work/off"); on=$(median < "$work/on")
echo "  off: $(paste -sd' ' "$work/off") Gbit/s -> median $off"
echo "  on:  $(paste -sd' ' "$work/on") Gbit/s -> median $on"
echo "  ratio on/off: $(echo "$on $off" | awk '{printf "%.3f", $1 / $2}') (goal >= 0.95)"

echo "== doctor on a node with $npods pods"
for k in $(seq 1 $((npods - 1))); do pod n1 "$k" > /dev/null; done
echo "  pods on node n1: $(ls "$work/cache/results" | wc -l)"
hyperfine -N -w 2 -r "$runs" -i \
    -n "doctor one pod" "$nd --node-netns /run/netns/${tag}n1 --cni-cache-dir $work/cache --nestlet-root $work/nestlet doctor bench/p0 --etcd-endpoints $URL --subnet-file $work/n1.env" \
    -n "doctor --all ($npods pods)" "$nd --node-netns /run/netns/${tag}n1 --cni-cache-dir $work/cache --nestlet-root $work/nestlet doctor --all --etcd-endpoints $URL --subnet-file $work/n1.env" \
    2>&1 | grep -E 'Time|±|doctor' || true
"$nd" "${ndargs[@]}" doctor --all --etcd-endpoints "$URL" --subnet-file "$work/n1.env" --json | jq -r '[.[] | .summary.status] | group_by(.) | map("\(.[0]): \(length)") | join(", ")' | sed 's/^/  pod results: /'
