#!/usr/bin/env bash
# Set up a fresh Debian machine (as root) and run nestbox's whole test suite:
# formatting and lints, unit tests, and the end-to-end tests against the real peers
# (runc, crun, containerd, podman, the reference CNI plugins).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

# Each phase says when it starts (seconds since this script began): CI's budget is finite.
phase() { echo "== $1 (at ${SECONDS}s)"; }

phase deps
bash scripts/deps.sh
# A real kube-apiserver 1.20.2 + controller-manager, built once from Debian's source package
# (cached under /var/cache/nestbox; ~7 min the first time on 2 cores).
phase "kube build"
bash scripts/kube-build.sh

phase "build (release)"
cargo build --release --workspace
# The CNI plugins are tested as installed: the static musl build (scripts/build-cni.sh).
NESTBOX_CNI_BIN=$(bash scripts/build-cni.sh | tail -1)
export NESTBOX_CNI_BIN
echo "CNI plugins under test: $NESTBOX_CNI_BIN"
# The shim too: the static musl build that gets installed (scripts/build-shim.sh).
NESTBOX_SHIM_BIN=$(bash scripts/build-shim.sh | tail -1)
export NESTBOX_SHIM_BIN
echo "containerd shim under test: $NESTBOX_SHIM_BIN"
# The runtime too: the static `runtime`-profile build of nestbox and nestbox-pause that gets
# installed (scripts/build-runtime.sh); tests look them up there first.
NESTBOX_RUNTIME_DIR=$(bash scripts/build-runtime.sh | tail -1)
export NESTBOX_RUNTIME_DIR
echo "runtime under test: $NESTBOX_RUNTIME_DIR"

phase "fmt and clippy"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
case "$NESTBOX_CNI_BIN" in
    */x86_64-unknown-linux-musl/*)
        cargo clippy --release -p nestbox-cni --target x86_64-unknown-linux-musl -- -D warnings ;;
esac

phase tests
export NESTBOX_BIN_DIR="$PWD/target/release"
export RUST_BACKTRACE=1
# Two threads: the machine has two cores and the end-to-end tests start real containers.
log=$(mktemp /tmp/nestbox-test.XXXXXX.log)
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --workspace --all-targets --no-fail-fast -- --test-threads=2 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary (cargo prints one "test result" line per binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
echo "== done (at ${SECONDS}s)"
exit "$status"
