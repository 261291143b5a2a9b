#!/usr/bin/env bash
# Overlay datapath and control-plane benchmark, all inside throw-away namespaces:
#  - iperf3 pod-to-pod throughput (single stream, median of RUNS) over
#      ours-vxlan   nestbox-overlayd --backend vxlan, pods through nestbox-vxlan (CNI)
#      hand-vxlan   the same flannel layout built by hand with ip/bridge, pods by hand
#      ours-hostgw  nestbox-overlayd --backend host-gw, pods through nestbox-host-gw
#      hand-hostgw  host-gw routes and pods by hand
#    with ratios ours/hand;
#  - control plane: time from a new node's lease appearing in etcd to both peers having
#    its neighbour, FDB entry and route (median of RUNS), and from its lease's deletion
#    to both peers dropping the route.
#   scripts/bench/overlay.sh [-n RUNS] [-t SECONDS]
set -euo pipefail

runs=3
secs=4
while [ $# -gt 0 ]; do
    case "$1" in
        -n) runs="$2"; shift 2 ;;
        -t) secs="$2"; shift 2 ;;
        *) echo "usage: $0 [-n RUNS] [-t SECONDS]" >&2; exit 2 ;;
    esac
done

[ "$(id -u)" = 0 ] || { echo "overlay.sh: needs root" >&2; exit 1; }
for c in ip bridge etcd curl iperf3 jq base64; do
    command -v "$c" > /dev/null || { echo "overlay.sh: $c missing (apt-get install etcd-server iperf3 jq curl)" >&2; exit 1; }
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
for p in nestbox-bridge nestbox-host-local; do ln -s "$cni_bin" "$work/bin/$p"; done
for p in nestbox-vxlan nestbox-host-gw; do ln -s "$agent" "$work/bin/$p"; done
ETCD_IP=192.168.77.2
URL="http://$ETCD_IP:2379"
PREFIX=/coreos.com/network
pids=()

teardown() {
    set +e
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
    pids=()
    for ns in $(ip netns list | awk '{print $1}' | grep "^$tag"); do ip netns del "$ns"; done
}
trap 'teardown; rm -rf "$work"' EXIT

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
now_ms() { echo $(( ${EPOCHREALTIME/./} / 1000 )); }
b64() { printf '%s' "$1" | base64 -w0; }
etcd_post() { ip netns exec "${tag}et" curl -sS -m 5 -X POST "$URL$1" -d "$2"; }

# switch + etcd + nodes n1..n3 on 192.168.77.0/24
topo_up() {
    ip netns add "${tag}sw"
    ip -n "${tag}sw" link add br0 type bridge
    ip -n "${tag}sw" link set br0 up
    local i=0 n
    for n in et n1 n2 n3; do
        ip netns add "${tag}$n"
        ip -n "${tag}$n" link set lo up
        ip -n "${tag}sw" link add "p$n" type veth peer name eth0 netns "${tag}$n"
        ip -n "${tag}sw" link set "p$n" master br0 up
        ip -n "${tag}$n" link set eth0 up
        if [ "$n" = et ]; then
            ip -n "${tag}$n" addr add "$ETCD_IP/24" dev eth0
        else
            ip -n "${tag}$n" addr add "192.168.77.1$i/24" dev eth0
            ip netns exec "${tag}$n" sysctl -qw net.ipv4.ip_forward=1
        fi
        i=$((i + 1))
    done
    rm -rf "$work/etcd"
    ip netns exec "${tag}et" etcd --data-dir "$work/etcd" \
        --listen-client-urls "$URL" --advertise-client-urls "$URL" \
        --listen-peer-urls http://127.0.0.1:2380 > "$work/etcd.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do
        ip netns exec "${tag}et" curl -sf -m 1 "$URL/health" > /dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "etcd did not start" >&2; exit 1
}

start_agent() { # node backend
    rm -f "$work/$1.env"
    "$agent" --netns "/run/netns/${tag}$1" --iface eth0 --etcd-endpoints "$URL" \
        --backend "$2" --subnet-file "$work/$1.env" >> "$work/$1.log" 2>&1 &
    pids+=($!)
    eval "agent_$1=$!"
    for _ in $(seq 200); do [ -s "$work/$1.env" ] && return 0; sleep 0.05; done
    echo "agent on $1 wrote no subnet.env:" >&2; cat "$work/$1.log" >&2; exit 1
}

# No NAT on either side (the hand-built layout has none): delegate ipMasq false.
cni_pod() { # node plugin -> pod IP on stdout
    local node=$1 plugin=$2 pod="${tag}p$1"
    ip netns add "$pod"
    ip -n "$pod" link set lo up
    printf '{"cniVersion":"1.0.0","name":"ovlbench","type":"%s","subnetFile":"%s","dataDir":"%s","ipam":{"dataDir":"%s"},"delegate":{"ipMasq":false,"isDefaultGateway":true}}' \
        "$plugin" "$work/$node.env" "$work/$node.flannel" "$work/$node.ipam" > "$work/$node.conf"
    ip netns exec "${tag}$node" env CNI_COMMAND=ADD CNI_CONTAINERID="c$node" CNI_NETNS="/run/netns/$pod" \
        CNI_IFNAME=eth0 CNI_PATH="$work/bin" "$work/bin/$plugin" < "$work/$node.conf" > "$work/$node.res"
    jq -r '.ips[0].address' "$work/$node.res" | cut -d/ -f1
}

hand_pod() { # node subnet-index mtu -> pod IP (bridge cni0 10.244.X.1/24, pod .2)
    local node=$1 x=$2 mtu=$3 pod="${tag}p$1" nn="${tag}$1"
    ip netns add "$pod"
    ip -n "$pod" link set lo up
    ip -n "$nn" link add cni0 mtu "$mtu" type bridge
    ip -n "$nn" addr add "10.244.$x.1/24" dev cni0
    ip -n "$nn" link set cni0 up
    ip -n "$nn" link add veth0 mtu "$mtu" type veth peer name eth0 netns "$pod" mtu "$mtu"
    ip -n "$nn" link set veth0 master cni0 up
    ip -n "$pod" addr add "10.244.$x.2/24" dev eth0
    ip -n "$pod" link set eth0 up
    ip -n "$pod" route add 10.244.0.0/16 via "10.244.$x.1"
    echo "10.244.$x.2"
}

iperf() { # label client-pod server-ip
    local label=$1 cpod=$2 ip=$3 i
    ip netns exec "${tag}pn2" iperf3 -s -D --pidfile "$work/iperf.pid" > /dev/null
    sleep 0.3
    : > "$work/rates"
    for ((i = 0; i < runs; i++)); do
        ip netns exec "$cpod" iperf3 -c "$ip" -t "$secs" -J \
            | jq '.end.sum_received.bits_per_second / 1e9' >> "$work/rates"
    done
    kill "$(cat "$work/iperf.pid")" 2>/dev/null || true
    local m
    m=$(median < "$work/rates")
    printf '%-12s %6.2f Gbit/s  (runs: %s)\n' "$label" "$m" "$(tr '\n' ' ' < "$work/rates")"
    eval "rate_${label//-/_}=$m"
}

# ONLY=ours-vxlan,hand-vxlan,ours-hostgw,hand-hostgw limits the sections run.
want() { [ -z "${ONLY:-}" ] || [[ ",$ONLY," == *",$1,"* ]]; }
rate_ours_vxlan=0 rate_hand_vxlan=0 rate_ours_hostgw=0 rate_hand_hostgw=0
echo "== iperf3 pod-to-pod, single stream, ${secs}s x $runs runs (median)"

if want ours-vxlan; then
# ours, VXLAN
topo_up
etcd_post /v3/kv/put "{\"key\":\"$(b64 $PREFIX/config)\",\"value\":\"$(b64 '{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}')\"}" > /dev/null
start_agent n1 vxlan
start_agent n2 vxlan
cni_pod n1 nestbox-vxlan > /dev/null
ip2=$(cni_pod n2 nestbox-vxlan)
for _ in $(seq 100); do ip netns exec "${tag}pn1" ping -c1 -W1 "$ip2" > /dev/null 2>&1 && break; sleep 0.1; done
iperf ours-vxlan "${tag}pn1" "$ip2"

# control plane: a third node joins and leaves
: > "$work/join"; : > "$work/leave"
for ((i = 0; i < runs; i++)); do
    rm -f "$work/n3.env"
    "$agent" --netns "/run/netns/${tag}n3" --iface eth0 --etcd-endpoints "$URL" --backend vxlan \
        --subnet-file "$work/n3.env" >> "$work/n3.log" 2>&1 &
    a3=$!; pids+=($a3)
    subnet=""
    while [ -z "$subnet" ]; do
        subnet=$(etcd_post /v3/kv/range "{\"key\":\"$(b64 $PREFIX/subnets/)\",\"range_end\":\"$(b64 $PREFIX/subnets0)\"}" \
            | jq -r '.kvs[]? | select((.value|@base64d|fromjson|.PublicIP)=="192.168.77.13") | .key|@base64d' \
            | sed "s|$PREFIX/subnets/||; s|-|/|")
    done
    t0=$(now_ms)
    until ip -n "${tag}n1" route show "$subnet" | grep -q onlink && ip -n "${tag}n2" route show "$subnet" | grep -q onlink; do
        sleep 0.005
    done
    t1=$(now_ms)
    echo $((t1 - t0)) >> "$work/join"
    kill "$a3"; wait "$a3" 2>/dev/null || true
    etcd_post /v3/kv/deleterange "{\"key\":\"$(b64 "$PREFIX/subnets/${subnet/\//-}")\"}" > /dev/null
    t0=$(now_ms)
    while ip -n "${tag}n1" route show "$subnet" | grep -q . || ip -n "${tag}n2" route show "$subnet" | grep -q .; do
        sleep 0.005
    done
    t1=$(now_ms)
    echo $((t1 - t0)) >> "$work/leave"
done
teardown
fi

if want hand-vxlan; then
# by hand, VXLAN (flannel's layout: same device settings, entries and MTU)
topo_up
mac() { printf '02:00:00:00:00:%02x' "$1"; }
for x in 1 2; do
    nn="${tag}n$x"
    ip -n "$nn" link add flannel.1 address "$(mac $x)" mtu 1450 type vxlan id 1 local "192.168.77.1$x" dev eth0 dstport 8472 nolearning
    ip -n "$nn" addr add "10.244.$x.0/32" dev flannel.1
    ip -n "$nn" link set flannel.1 up
    y=$((3 - x))
    ip -n "$nn" neigh replace "10.244.$y.0" lladdr "$(mac $y)" dev flannel.1 nud permanent
    bridge -n "$nn" fdb replace "$(mac $y)" dev flannel.1 dst "192.168.77.1$y" self permanent
    ip -n "$nn" route replace "10.244.$y.0/24" via "10.244.$y.0" dev flannel.1 onlink
done
hand_pod n1 1 1450 > /dev/null
ip2=$(hand_pod n2 2 1450)
iperf hand-vxlan "${tag}pn1" "$ip2"
teardown
fi

if want ours-hostgw; then
# ours, host-gw
topo_up
etcd_post /v3/kv/put "{\"key\":\"$(b64 $PREFIX/config)\",\"value\":\"$(b64 '{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}}')\"}" > /dev/null
start_agent n1 host-gw
start_agent n2 host-gw
cni_pod n1 nestbox-host-gw > /dev/null
ip2=$(cni_pod n2 nestbox-host-gw)
for _ in $(seq 100); do ip netns exec "${tag}pn1" ping -c1 -W1 "$ip2" > /dev/null 2>&1 && break; sleep 0.1; done
iperf ours-hostgw "${tag}pn1" "$ip2"
teardown
fi

if want hand-hostgw; then
# by hand, host-gw
topo_up
for x in 1 2; do
    y=$((3 - x))
    ip -n "${tag}n$x" route replace "10.244.$y.0/24" via "192.168.77.1$y" dev eth0
done
hand_pod n1 1 1500 > /dev/null
ip2=$(hand_pod n2 2 1500)
iperf hand-hostgw "${tag}pn1" "$ip2"
teardown
fi

ratio() { if [ "$2" != 0 ] && [ "$1" != 0 ]; then printf '%.3f' "$(bc -l <<< "$1/$2")"; else echo n/a; fi; }
echo "ratio ours/hand: vxlan $(ratio "$rate_ours_vxlan" "$rate_hand_vxlan"), host-gw $(ratio "$rate_ours_hostgw" "$rate_hand_hostgw")"
if want ours-vxlan; then
    echo "== control plane (vxlan, 2 peers, $runs joins/leaves)"
    printf 'lease appears -> both peers programmed: median %s ms (runs: %s)\n' "$(median < "$work/join")" "$(tr '\n' ' ' < "$work/join")"
    printf 'lease deleted -> both peers cleaned:    median %s ms (runs: %s)\n' "$(median < "$work/leave")" "$(tr '\n' ' ' < "$work/leave")"
fi
