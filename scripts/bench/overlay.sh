#!/usr/bin/env bash
# Overlay datapath and control-plane benchmark, all inside throw-away namespaces:
#  - iperf3 pod-to-pod throughput (single stream, median of RUNS), ours vs the same
#    layout built by hand, runs interleaved (ours, hand, ours, ...) on two identical
#    topologies that exist side by side:
#      vxlan    nestbox-overlayd --backend vxlan + pods through nestbox-vxlan (CNI)
#               vs flannel's VXLAN layout and pods made with ip/bridge
#      host-gw  nestbox-overlayd --backend host-gw + nestbox-host-gw
#               vs host-gw routes and pods made by hand
#      udp      nestbox-overlayd --backend udp (flannel0 TUN + user-space forwarder)
#               vs nestbox-overlayd --backend vxlan, pods through nestbox-vxlan on both
#               (goal: UDP at least half of VXLAN; flannel's UDP mode gets a fraction)
#  - control plane: time from a new node's lease appearing in etcd to both peers having
#    its route (installed after its neighbour and FDB entry), and from its lease's
#    deletion to both peers dropping it (median of RUNS).
#   scripts/bench/overlay.sh [-n RUNS] [-t SECONDS]      (ONLY=vxlan|host-gw|control|udp)
set -euo pipefail

runs=5
secs=4
while [ $# -gt 0 ]; do
    case "$1" in
        -n) runs="$2"; shift 2 ;;
        -t) secs="$2"; shift 2 ;;
        *) echo "usage: $0 [-n RUNS] [-t SECONDS]" >&2; exit 2 ;;
    esac
done

[ "$(id -u)" = 0 ] || { echo "overlay.sh: needs root" >&2; exit 1; }
for c in ip bridge etcd curl iperf3 jq base64 bc; do
    command -v "$c" > /dev/null || { echo "overlay.sh: $c missing (apt-get install etcd-server iperf3 jq curl bc)" >&2; exit 1; }
done
root=$(cd "$(dirname "$0")/../.." && pwd)
rel="${NESTBOX_BIN_DIR:-$root/target/release}"
agent="$rel/nestbox-overlayd"
cni_bin="$rel/nestbox-cni"
for b in "$agent" "$cni_bin"; do
    [ -x "$b" ] || { echo "build first: cargo build --release -p nestbox-overlayd -p nestbox-cni" >&2; exit 1; }
done

tag="nbo$$"
work=$(mktemp -d /tmp/nestbox-ovlbench.XXXXXX)
mkdir -p "$work/bin"
for p in nestbox-bridge nestbox-host-local nestbox-vxlan nestbox-host-gw; do ln -s "$cni_bin" "$work/bin/$p"; done
ETCD_IP=192.168.77.2
URL="http://$ETCD_IP:2379"
PREFIX=/coreos.com/network
pids=()

teardown() {
    set +e
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    # iperf3 servers daemonise: a failed run must not leave them behind.
    for f in "$work"/iperf-*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
    pids=()
    for ns in $(ip netns list | awk '{print $1}' | grep "^$tag"); do ip netns del "$ns"; done
    set -e
}
trap 'teardown; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

want() { [ -z "${ONLY:-}" ] || [[ ",$ONLY," == *",$1,"* ]]; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
now_ms() { echo $(( ${EPOCHREALTIME/./} / 1000 )); }
b64() { printf '%s' "$1" | base64 -w0; }
etcd_post() { ip netns exec "${tag}aet" curl -sS -m 5 -X POST "$URL$1" -d "$2"; }

# topology T ("${tag}a" = ours, with etcd; "${tag}b" = by hand): switch, nodes n1..n3 on
# 192.168.77.0/24 (the same addresses in both: they never meet).
topo_up() {
    local T=$1 i=1 n
    ip netns add "${T}sw"
    ip -n "${T}sw" link add br0 type bridge
    ip -n "${T}sw" link set br0 up
    for n in et n1 n2 n3; do
        ip netns add "${T}$n"
        ip -n "${T}$n" link set lo up
        ip -n "${T}sw" link add "p$n" type veth peer name eth0 netns "${T}$n"
        ip -n "${T}sw" link set "p$n" master br0 up
        ip -n "${T}$n" link set eth0 up
        if [ "$n" = et ]; then
            ip -n "${T}$n" addr add "$ETCD_IP/24" dev eth0
        else
            ip -n "${T}$n" addr add "192.168.77.1$i/24" dev eth0
            ip netns exec "${T}$n" sysctl -qw net.ipv4.ip_forward=1
            i=$((i + 1))
        fi
    done
}

etcd_up() { # backend [topology]
    local T=${2:-${tag}a}
    rm -rf "$work/etcd-$T"
    ip netns exec "${T}et" etcd --data-dir "$work/etcd-$T" \
        --listen-client-urls "$URL" --advertise-client-urls "$URL" \
        --listen-peer-urls http://127.0.0.1:2380 > "$work/etcd-$T.log" 2>&1 &
    pids+=($!)
    local ok=0
    for _ in $(seq 100); do
        ip netns exec "${T}et" curl -sf -m 1 "$URL/health" > /dev/null 2>&1 && { ok=1; break; }
        sleep 0.1
    done
    [ $ok = 1 ] || { echo "etcd did not start" >&2; exit 1; }
    ip netns exec "${T}et" curl -sS -m 5 -X POST "$URL/v3/kv/put" -d "{\"key\":\"$(b64 $PREFIX/config)\",\"value\":\"$(b64 "{\"Network\":\"10.244.0.0/16\",\"SubnetLen\":24,\"Backend\":{\"Type\":\"$1\"}}")\"}" > /dev/null
}

start_agent() { # node backend [topology]
    local T=${3:-${tag}a}
    local f="$work/$T$1"
    rm -f "$f.env"
    "$agent" --netns "/run/netns/$T$1" --iface eth0 --etcd-endpoints "$URL" \
        --backend "$2" --subnet-file "$f.env" >> "$f.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 200); do [ -s "$f.env" ] && return 0; sleep 0.05; done
    echo "agent on $T$1 wrote no subnet.env:" >&2; cat "$f.log" >&2; exit 1
}

# Ours: a pod through our overlay CNI plugin. No NAT on either side (the hand-built
# layout has none): delegate ipMasq false, and a default route like kube-flannel's config.
cni_pod() { # node plugin [topology] -> pod IP on stdout
    local node=$1 plugin=$2 T=${3:-${tag}a}
    local pod="${T}pod$1" f="$work/$T$1"
    ip netns add "$pod"
    ip -n "$pod" link set lo up
    printf '{"cniVersion":"1.0.0","name":"ovlbench","type":"%s","subnetFile":"%s","dataDir":"%s","ipam":{"dataDir":"%s"},"delegate":{"ipMasq":false,"isDefaultGateway":true}}' \
        "$plugin" "$f.env" "$f.flannel" "$f.ipam" > "$f.conf"
    ip netns exec "$T$node" env CNI_COMMAND=ADD CNI_CONTAINERID="c$node" CNI_NETNS="/run/netns/$pod" \
        CNI_IFNAME=eth0 CNI_PATH="$work/bin" "$work/bin/$plugin" < "$f.conf" > "$f.res" 2>> "$work/cni.log"
    jq -r '.ips[0].address' "$f.res" | cut -d/ -f1
}

# By hand: bridge cni0 10.244.X.1/24, pod .2 behind a veth, default route via the bridge.
hand_pod() { # node subnet-index mtu -> pod IP
    local node=$1 x=$2 mtu=$3 pod="${tag}bpod$1" nn="${tag}b$1"
    ip netns add "$pod"
    ip -n "$pod" link set lo up
    ip -n "$nn" link add cni0 mtu "$mtu" type bridge
    ip -n "$nn" addr add "10.244.$x.1/24" dev cni0
    ip -n "$nn" link set cni0 up
    ip -n "$nn" link add veth0 mtu "$mtu" type veth peer name eth0 netns "$pod" mtu "$mtu"
    ip -n "$nn" link set veth0 master cni0 up
    ip -n "$pod" addr add "10.244.$x.2/24" dev eth0
    ip -n "$pod" link set eth0 up
    ip -n "$pod" route add default via "10.244.$x.1"
    echo "10.244.$x.2"
}

reach() { # pod ip
    for _ in $(seq 100); do ip netns exec "$1" ping -c1 -W1 "$2" > /dev/null 2>&1 && return 0; sleep 0.1; done
    echo "$1 cannot reach $2" >&2; exit 1
}

one_iperf() { # client-pod server-ip -> Gbit/s (one retry: the server may be finishing)
    local r
    for _ in 1 2; do
        r=$(ip netns exec "$1" iperf3 -c "$2" -t "$secs" -J 2>/dev/null | jq -r '.end.sum_received.bits_per_second // empty')
        [ -n "$r" ] && { bc -l <<< "$r / 1000000000"; return 0; }
        sleep 0.5
    done
    echo "iperf3 from $1 to $2 failed" >&2; exit 1
}

duel() { # label ours-ip hand-ip [name-of-ours name-of-hand]
    local label=$1 an=${4:-ours} bn=${5:-hand} i
    ip netns exec "${tag}apodn2" iperf3 -s -D --pidfile "$work/iperf-a.pid" > /dev/null
    ip netns exec "${tag}bpodn2" iperf3 -s -D --pidfile "$work/iperf-b.pid" > /dev/null
    sleep 0.3
    : > "$work/ours"; : > "$work/hand"
    for ((i = 0; i < runs; i++)); do
        one_iperf "${tag}apodn1" "$2" >> "$work/ours"
        one_iperf "${tag}bpodn1" "$3" >> "$work/hand"
    done
    kill "$(cat "$work/iperf-a.pid")" "$(cat "$work/iperf-b.pid")" 2>/dev/null || true
    local o h
    o=$(median < "$work/ours"); h=$(median < "$work/hand")
    printf '%-8s %s %6.2f Gbit/s  %s %6.2f Gbit/s  ratio %.3f\n' "$label" "$an" "$o" "$bn" "$h" "$(bc -l <<< "$o/$h")"
    printf '         %s runs: %s\n         %s runs: %s\n' \
        "$an" "$(xargs printf '%.2f ' < "$work/ours")" "$bn" "$(xargs printf '%.2f ' < "$work/hand")"
}

mac() { printf '02:00:00:00:00:%02x' "$1"; }

echo "== iperf3 pod-to-pod, single stream, ${secs}s x $runs interleaved runs (median)"
if want vxlan || want control; then
    topo_up "${tag}a"; etcd_up vxlan
    start_agent n1 vxlan; start_agent n2 vxlan
    cni_pod n1 nestbox-vxlan > /dev/null
    ours_ip=$(cni_pod n2 nestbox-vxlan)
    reach "${tag}apodn1" "$ours_ip"
fi
if want vxlan; then
    topo_up "${tag}b"
    for x in 1 2; do
        nn="${tag}bn$x" y=$((3 - x))
        ip -n "$nn" link add flannel.1 address "$(mac $x)" mtu 1450 type vxlan id 1 local "192.168.77.1$x" dev eth0 dstport 8472 nolearning
        ip -n "$nn" addr add "10.244.$x.0/32" dev flannel.1
        ip -n "$nn" link set flannel.1 up
        ip -n "$nn" neigh replace "10.244.$y.0" lladdr "$(mac $y)" dev flannel.1 nud permanent
        bridge -n "$nn" fdb replace "$(mac $y)" dev flannel.1 dst "192.168.77.1$y" self permanent
        ip -n "$nn" route replace "10.244.$y.0/24" via "10.244.$y.0" dev flannel.1 onlink
    done
    hand_pod n1 1 1450 > /dev/null
    hand_ip=$(hand_pod n2 2 1450)
    reach "${tag}bpodn1" "$hand_ip"
    duel vxlan "$ours_ip" "$hand_ip"
fi

if want control; then
    : > "$work/join"; : > "$work/leave"
    for ((i = 0; i < runs; i++)); do
        rm -f "$work/n3.env"
        "$agent" --netns "/run/netns/${tag}an3" --iface eth0 --etcd-endpoints "$URL" --backend vxlan \
            --subnet-file "$work/n3.env" >> "$work/n3.log" 2>&1 &
        a3=$!
        subnet=""
        while [ -z "$subnet" ]; do
            subnet=$(etcd_post /v3/kv/range "{\"key\":\"$(b64 $PREFIX/subnets/)\",\"range_end\":\"$(b64 $PREFIX/subnets0)\"}" \
                | jq -r '.kvs[]? | select((.value|@base64d|fromjson|.PublicIP)=="192.168.77.13") | .key|@base64d' \
                | sed "s|$PREFIX/subnets/||; s|-|/|")
        done
        t0=$(now_ms)
        until ip -n "${tag}an1" route show "$subnet" | grep -q onlink && ip -n "${tag}an2" route show "$subnet" | grep -q onlink; do
            sleep 0.002
        done
        echo $(($(now_ms) - t0)) >> "$work/join"
        kill "$a3"; wait "$a3" 2>/dev/null || true
        etcd_post /v3/kv/deleterange "{\"key\":\"$(b64 "$PREFIX/subnets/${subnet/\//-}")\"}" > /dev/null
        t0=$(now_ms)
        while ip -n "${tag}an1" route show "$subnet" | grep -q . || ip -n "${tag}an2" route show "$subnet" | grep -q .; do
            sleep 0.002
        done
        echo $(($(now_ms) - t0)) >> "$work/leave"
    done
    echo "== control plane (vxlan, 2 peers, $runs joins/leaves of a third node; includes ~5 ms polling)"
    printf 'lease appears -> both peers programmed: median %s ms (runs: %s)\n' "$(median < "$work/join")" "$(tr '\n' ' ' < "$work/join")"
    printf 'lease deleted -> both peers cleaned:    median %s ms (runs: %s)\n' "$(median < "$work/leave")" "$(tr '\n' ' ' < "$work/leave")"
fi
teardown

if want host-gw; then
    topo_up "${tag}a"; etcd_up host-gw
    start_agent n1 host-gw; start_agent n2 host-gw
    cni_pod n1 nestbox-host-gw > /dev/null
    ours_ip=$(cni_pod n2 nestbox-host-gw)
    reach "${tag}apodn1" "$ours_ip"
    topo_up "${tag}b"
    for x in 1 2; do
        y=$((3 - x))
        ip -n "${tag}bn$x" route replace "10.244.$y.0/24" via "192.168.77.1$y" dev eth0
    done
    hand_pod n1 1 1500 > /dev/null
    hand_ip=$(hand_pod n2 2 1500)
    reach "${tag}bpodn1" "$hand_ip"
    duel host-gw "$ours_ip" "$hand_ip"
    teardown
fi

if want udp; then
    # Ours both sides: the UDP backend (topology a) next to our VXLAN (topology b).
    topo_up "${tag}a"; etcd_up udp "${tag}a"
    start_agent n1 udp; start_agent n2 udp
    cni_pod n1 nestbox-vxlan > /dev/null
    udp_ip=$(cni_pod n2 nestbox-vxlan)
    reach "${tag}apodn1" "$udp_ip"
    topo_up "${tag}b"; etcd_up vxlan "${tag}b"
    start_agent n1 vxlan "${tag}b"; start_agent n2 vxlan "${tag}b"
    cni_pod n1 nestbox-vxlan "${tag}b" > /dev/null
    vx_ip=$(cni_pod n2 nestbox-vxlan "${tag}b")
    reach "${tag}bpodn1" "$vx_ip"
    duel udp "$udp_ip" "$vx_ip" "udp" "vxlan"
    teardown
fi
