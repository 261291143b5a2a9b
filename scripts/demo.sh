#!/usr/bin/env bash
# nestbox demo: nestlet in standalone mode — two pods from manifests, with networking, one
# answering the other over HTTP. No apiserver.
#
# Builds everything, then inside a throw-away "node" network namespace (the host's own network
# namespace is never touched):
#   1. writes a CNI config (nestbox-bridge + nestbox-host-local: the operator's job; nestlet
#      only reads it) and imports a busybox image (an OCI layout made with umoci),
#   2. starts nestlet with a static pod manifest directory; each pod runs through
#      containerd-shim-nestbox-v2 and the nestbox runtime: a nestbox-pause sandbox with new
#      net/ipc/uts namespaces, CNI ADD, then the app container joined to the sandbox,
#   3. drops in a web server pod (busybox httpd), then a client pod that fetches its page,
#   4. shows the pods (`nestlet pods`) and the client's log in the CRI format,
# and removes everything it made (pods, shims, cgroups, mounts, netns), also when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

bash scripts/deps.sh
echo "== building nestbox (release)"
cargo build --release --workspace
BIN="$PWD/target/release"

WORK=$(mktemp -d /tmp/nestbox-demo.XXXXXX)
NODE="nbxdemo$$"
CGROOT="/nestbox-demo-$$"
NESTLET_PID=""

cleanup() {
  set +e
  if [ -n "$NESTLET_PID" ]; then
    # Removing the manifests makes nestlet stop the pods (CNI DEL, shims, cgroups, mounts).
    rm -f "$WORK"/manifests/*.yaml
    for _ in $(seq 1 60); do
      [ -z "$(ls -A "$WORK/root/pods" 2>/dev/null)" ] && break
      sleep 0.5
    done
    kill "$NESTLET_PID" 2>/dev/null; wait "$NESTLET_PID" 2>/dev/null
  fi
  # Belt and braces after a failure: whatever still runs in the demo's cgroups, and mounts.
  for d in /sys/fs/cgroup/*"$CGROOT" /sys/fs/cgroup/*/"$CGROOT"; do
    [ -d "$d" ] && find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null
  done
  sleep 0.2
  grep -o " $WORK[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null
  for d in /sys/fs/cgroup/*"$CGROOT" /sys/fs/cgroup/*/"$CGROOT"; do
    [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  ip netns del "$NODE" >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== the node: network namespace $NODE"
ip netns add "$NODE"
ip -n "$NODE" link set lo up
ip -n "$NODE" addr add 192.168.200.1/32 dev lo

echo "== CNI: plugins and a config (nestbox-bridge + nestbox-host-local, 10.200.0.0/24)"
bash scripts/install.sh --cni-bin-dir "$WORK/cni-bin" >/dev/null
mkdir -p "$WORK/net.d" "$WORK/manifests"
cat >"$WORK/net.d/10-demo.conflist" <<CONF
{
  "cniVersion": "1.0.0",
  "name": "demo",
  "plugins": [{
    "type": "nestbox-bridge",
    "bridge": "nbx0",
    "isGateway": true,
    "isDefaultGateway": true,
    "ipam": {
      "type": "nestbox-host-local",
      "ranges": [[{"subnet": "10.200.0.0/24"}]],
      "dataDir": "$WORK/ipam"
    }
  }]
}
CONF

echo "== image: busybox-static as an OCI layout (umoci), imported into nestlet's store"
mkdir -p "$WORK/rootfs"/{bin,proc,sys,dev,tmp,etc,root}
cp /bin/busybox "$WORK/rootfs/bin/busybox"
for a in $(/bin/busybox --list); do
  [ "$a" = busybox ] || ln -sf busybox "$WORK/rootfs/bin/$a"
done
echo "root:x:0:0:root:/root:/bin/sh" >"$WORK/rootfs/etc/passwd"
echo "root:x:0:" >"$WORK/rootfs/etc/group"
umoci init --layout "$WORK/oci"
umoci new --image "$WORK/oci:1"
umoci unpack --image "$WORK/oci:1" "$WORK/unpacked" >/dev/null
cp -a "$WORK/rootfs/." "$WORK/unpacked/rootfs/"
umoci repack --image "$WORK/oci:1" "$WORK/unpacked"
umoci config --image "$WORK/oci:1" --config.cmd sh --config.env PATH=/usr/sbin:/usr/bin:/sbin:/bin
"$BIN/nestlet" image import "$WORK/oci" --name demo.local/busybox:1 --root "$WORK/root"
"$BIN/nestlet" image ls --root "$WORK/root"

echo "== nestlet (standalone: --pod-manifest-path, no --kubeconfig) in the node namespace"
nsenter --net="/run/netns/$NODE" "$BIN/nestlet" --node-name demo --root "$WORK/root" \
  --pod-manifest-path "$WORK/manifests" --pod-log-dir "$WORK/logs" \
  --cni-conf-dir "$WORK/net.d" --cni-bin-dir "$WORK/cni-bin" --cgroup-root "$CGROOT" \
  2>"$WORK/nestlet.log" &
NESTLET_PID=$!

status() { # pod name, jq filter on its status.json
  for s in "$WORK"/root/pods/*/state.json; do
    [ -f "$s" ] || continue
    if [ "$(jq -r .name "$s")" = "$1" ] && [ -f "$(dirname "$s")/status.json" ]; then
      jq -r "$2" "$(dirname "$s")/status.json"
      return
    fi
  done
}
wait_phase() { # pod name, phase
  for _ in $(seq 1 120); do
    [ "$(status "$1" .phase)" = "$2" ] && return 0
    sleep 0.5
  done
  echo "pod $1 did not reach $2; nestlet's log:" >&2
  tail -20 "$WORK/nestlet.log" >&2
  return 1
}

echo "== pod 1: a web server (busybox httpd on :8080)"
cat >"$WORK/manifests/web.yaml" <<'POD'
apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: httpd
    image: demo.local/busybox:1
    command: ["sh", "-c", "mkdir -p /www && echo \"hello from pod $(hostname)\" > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports:
    - containerPort: 8080
POD
wait_phase web-demo Running
WEB_IP=$(status web-demo .podIP)
echo "web-demo is Running at $WEB_IP"

echo "== pod 2: a client that fetches the page from pod 1"
cat >"$WORK/manifests/client.yaml" <<POD
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  restartPolicy: Never
  containers:
  - name: wget
    image: demo.local/busybox:1
    env:
    - name: WEB
      value: "$WEB_IP"
    command: ["sh", "-c", "echo client at \$(hostname -i); wget -qO- http://\$(WEB):8080/"]
POD
wait_phase client-demo Succeeded

echo "== nestlet pods"
"$BIN/nestlet" pods --root "$WORK/root"
echo "== the client's log (CRI format: time, stream, full/partial, text)"
cat "$WORK"/logs/default_client-demo_*/wget/0.log
if grep -q "stdout F hello from pod web-demo" "$WORK"/logs/default_client-demo_*/wget/0.log; then
  echo "OK: pod client-demo reached pod web-demo ($WEB_IP) over HTTP"
else
  echo "FAIL: the client did not get the server's page" >&2
  exit 1
fi
