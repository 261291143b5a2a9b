#!/usr/bin/env bash
# nestbox demo: one pod with networking, no apiserver.
#
# Builds everything, then inside a throw-away "node" network namespace (the host's own network
# namespace is never touched):
#   1. starts a pause container (nestbox-pause) with new net, ipc and uts namespaces,
#   2. gives the pod eth0 and an address with the nestbox CNI bridge + host-local plugins,
#   3. runs a busybox app container that joins the pause container's namespaces by path,
#   4. shows that both share one network namespace, and that the app reaches the gateway,
# and removes everything it made, also when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

bash scripts/deps.sh
echo "== building nestbox (release)"
cargo build --release --workspace
BIN="$PWD/target/release"

WORK=$(mktemp -d /tmp/nestbox-demo.XXXXXX)
NODE="nbxdemo$$"
ROOT="$WORK/state"
CNI_BIN="$WORK/cni-bin"
POD_ID="demo-pause-$$"
APP_ID="demo-app-$$"

cleanup() {
  set +e
  if [ -n "${PAUSE_PID:-}" ]; then
    ip netns exec "$NODE" env CNI_COMMAND=DEL CNI_CONTAINERID="$POD_ID" CNI_NETNS="/proc/$PAUSE_PID/ns/net" \
      CNI_IFNAME=eth0 CNI_PATH="$CNI_BIN" "$CNI_BIN/nestbox-bridge" <"$WORK/net.conf" >/dev/null 2>&1
  fi
  "$BIN/nestbox" --root "$ROOT" delete --force "$APP_ID" >/dev/null 2>&1
  "$BIN/nestbox" --root "$ROOT" delete --force "$POD_ID" >/dev/null 2>&1
  ip netns del "$NODE" >/dev/null 2>&1
  # The containers' cgroups went with delete; drop their shared parent too (if now empty).
  find /sys/fs/cgroup -maxdepth 2 -type d -name nestbox-demo -exec rmdir {} + 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== the node: network namespace $NODE"
ip netns add "$NODE"
ip -n "$NODE" link set lo up

echo "== bundles"
# The test image: busybox-static, one binary plus its applet links.
mkdir -p "$WORK/app/rootfs"/{bin,proc,sys,dev,tmp,etc,root}
cp /bin/busybox "$WORK/app/rootfs/bin/busybox"
for a in $(/bin/busybox --list); do
  [ "$a" = busybox ] || ln -sf busybox "$WORK/app/rootfs/bin/$a"
done
echo "root:x:0:0:root:/root:/bin/sh" >"$WORK/app/rootfs/etc/passwd"
echo "root:x:0:" >"$WORK/app/rootfs/etc/group"
# The sandbox: only the static pause binary.
mkdir -p "$WORK/pause/rootfs"/{proc,sys,dev}
cp "$BIN/nestbox-pause" "$WORK/pause/rootfs/pause"

(cd "$WORK/pause" && "$BIN/nestbox" spec)
jq '.process.args = ["/pause"] | .process.terminal = false | .hostname = "demo-pod"
    | .linux.cgroupsPath = "/nestbox-demo/'"$POD_ID"'"' \
  "$WORK/pause/config.json" >"$WORK/pause/config.tmp" && mv "$WORK/pause/config.tmp" "$WORK/pause/config.json"

echo "== pod sandbox: nestbox create + start (pause)"
nsenter --net="/run/netns/$NODE" "$BIN/nestbox" --root "$ROOT" create --bundle "$WORK/pause" "$POD_ID"
"$BIN/nestbox" --root "$ROOT" start "$POD_ID"
PAUSE_PID=$("$BIN/nestbox" --root "$ROOT" state "$POD_ID" | jq -r .pid)
echo "pause pid $PAUSE_PID, netns $(readlink /proc/$PAUSE_PID/ns/net)"

echo "== pod network: CNI ADD with nestbox-bridge + nestbox-host-local (in the node netns)"
bash scripts/install.sh --cni-bin-dir "$CNI_BIN" >/dev/null
cat >"$WORK/net.conf" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "demo",
  "type": "nestbox-bridge",
  "bridge": "nbx0",
  "isGateway": true,
  "isDefaultGateway": true,
  "ipam": {
    "type": "nestbox-host-local",
    "ranges": [[{"subnet": "10.88.0.0/24"}]],
    "dataDir": "$WORK/ipam"
  }
}
EOF
ip netns exec "$NODE" env CNI_COMMAND=ADD CNI_CONTAINERID="$POD_ID" CNI_NETNS="/proc/$PAUSE_PID/ns/net" \
  CNI_IFNAME=eth0 CNI_PATH="$CNI_BIN" "$CNI_BIN/nestbox-bridge" <"$WORK/net.conf" >"$WORK/result.json"
jq . "$WORK/result.json"
POD_IP=$(jq -r '.ips[0].address' "$WORK/result.json")
GW=$(jq -r '.ips[0].gateway' "$WORK/result.json")

echo "== app container joins the pod's net, ipc and uts namespaces by path"
(cd "$WORK/app" && "$BIN/nestbox" spec)
jq --arg pid "$PAUSE_PID" --arg gw "$GW" --arg id "$APP_ID" '
    .process.terminal = false
  | .process.args = ["sh", "-c", "echo app netns: $(readlink /proc/self/ns/net); echo hostname: $(hostname); ip -4 addr show eth0; ping -c 2 -W 2 " + $gw]
  | .process.capabilities |= with_entries(.value += ["CAP_NET_RAW"])
  | del(.hostname)
  | .linux.cgroupsPath = "/nestbox-demo/" + $id
  | .linux.namespaces = [
      {"type": "pid"}, {"type": "mount"},
      {"type": "network", "path": ("/proc/" + $pid + "/ns/net")},
      {"type": "ipc", "path": ("/proc/" + $pid + "/ns/ipc")},
      {"type": "uts", "path": ("/proc/" + $pid + "/ns/uts")}]' \
  "$WORK/app/config.json" >"$WORK/app/config.tmp" && mv "$WORK/app/config.tmp" "$WORK/app/config.json"
"$BIN/nestbox" --root "$ROOT" run --bundle "$WORK/app" "$APP_ID" | tee "$WORK/app.out"

echo "== result"
echo "pause netns: $(readlink /proc/$PAUSE_PID/ns/net)"
if grep -qF "app netns: $(readlink /proc/$PAUSE_PID/ns/net)" "$WORK/app.out"; then
  echo "OK: the app container shares the pod's network namespace; pod IP $POD_IP reaches gateway $GW"
else
  echo "FAIL: the app container is not in the pod's network namespace" >&2
  exit 1
fi
