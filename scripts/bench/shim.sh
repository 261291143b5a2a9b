#!/usr/bin/env bash
# Benchmark: containerd-shim-nestbox-v2 + nestbox vs containerd's Go containerd-shim-runc-v2 +
# runc, side by side under one containerd 1.6 (CRI plugin on) inside a throw-away node netns
# (tests/src/bin/shim-bench.rs does the measuring):
#   - shim RSS per pod (VmRSS of the shim serving a pod whose container runs), over PODS pods
#   - `ctr run --rm` of busybox `true`, ROUNDS interleaved rounds
#   - CRI pod start: RunPodSandbox + CreateContainer + StartContainer, interleaved
# Prints medians, min-max and the ratios nestbox/Go. The shim measured is the installed build
# (scripts/build-shim.sh). A benchmark, not a test: numbers only.
#
# Usage: scripts/bench/shim.sh [ROUNDS] [PODS]   (as root; defaults 20 and 5)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS="${1:-20}"
PODS="${2:-5}"
[[ $(id -u) == 0 ]] || { echo "run as root" >&2; exit 1; }
for c in containerd ctr containerd-shim-runc-v2 runc; do
    command -v "$c" >/dev/null || { echo "missing: $c (bash scripts/deps.sh)" >&2; exit 1; }
done
cargo build --release -p nestbox-runtime -p nestbox-tests --bin nestbox-shim-bench >&2
NESTBOX_SHIM_BIN=$(bash scripts/build-shim.sh | tail -1)
export NESTBOX_SHIM_BIN NESTBOX_BIN_DIR="$PWD/target/release"
exec "$PWD/target/release/nestbox-shim-bench" "$ROUNDS" "$PODS"
