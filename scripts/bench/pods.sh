#!/usr/bin/env bash
# nestlet pods benchmark, all inside throw-away namespaces: a real kube-apiserver 1.20.2
# control plane (scripts/kube-build.sh, cached) in one netns, nestlet in a node netns, a local
# docker-registry with the busybox image. PODS pods (default 30) are created at once (image
# present, bound to the node); prints p50/p99/max of creation -> Running as a watch sees it,
# the RSS/PSS of nestlet plus its shims, and the time to delete them all, against the goals
# (p99 <= 1 s; <= 100 MiB; a stock kubelet + containerd + Go shims use ~560 MiB for 30 pods).
#   scripts/bench/pods.sh [-n PODS]
set -euo pipefail

pods=30
while [ $# -gt 0 ]; do
    case "$1" in
        -n) pods="$2"; shift 2 ;;
        *) echo "usage: $0 [-n PODS]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "pods.sh: needs root" >&2; exit 1; }
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/kube-build.sh >/dev/null
# The whole workspace, as scripts/test.sh builds it (one feature set, no rebuilds).
cargo build --release --workspace >&2
export NESTBOX_BIN_DIR="${NESTBOX_BIN_DIR:-$root/target/release}"
# The runtime as it gets installed (static, `runtime` profile: scripts/build-runtime.sh).
NESTBOX_RUNTIME_DIR="${NESTBOX_RUNTIME_DIR:-$(bash scripts/build-runtime.sh | tail -1)}"
export NESTBOX_RUNTIME_DIR
# The shim as it gets installed (static musl, size profile: scripts/build-shim.sh).
NESTBOX_SHIM_BIN="${NESTBOX_SHIM_BIN:-$(bash scripts/build-shim.sh --quiet | tail -1)}"
export NESTBOX_SHIM_BIN
# nestlet as it gets installed (size profile: scripts/build-nestlet.sh).
NESTBOX_NESTLET_DIR="${NESTBOX_NESTLET_DIR:-$(bash scripts/build-nestlet.sh --quiet | tail -1)}"
export NESTBOX_NESTLET_DIR
PODS="$pods" cargo test --release -p nestbox-tests --test nestlet_bench -- --ignored --nocapture --test-threads=1 2>&1 \
    | grep -E '(^|\.\.\. )(pods:|creation|from the start|cpu from|memory:|deletion)|^test result|panicked' | sed 's/^test .* \.\.\. //'
