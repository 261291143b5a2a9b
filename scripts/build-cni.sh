#!/usr/bin/env bash
# Build the nestbox-cni binary that gets installed, tested by scripts/test.sh and
# benchmarked: a static musl build (x86_64-unknown-linux-musl). Prints its path as the
# last line of stdout.
#
# Why musl: a CNI plugin is a short-lived process started for every pod, so its start-up
# is part of every ADD and DEL. glibc's start-up probes the CPU's caches with about 70
# CPUID instructions, each a VM exit (6.4 µs apiece on the CI machines): 0.45 ms per
# process. musl does none of that, and the static binary needs nothing from the node.
# Built with the `cni` profile (Cargo.toml: small code, whole-program LTO). Falls back
# to a glibc build (target/cni/nestbox-cni) when the musl target cannot be installed,
# and says so on stderr.
#   scripts/build-cni.sh [--quiet]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
target=x86_64-unknown-linux-musl
quiet=()
[ "${1:-}" = --quiet ] && quiet=(--quiet)

if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    rustup target add "$target" >&2 || true
fi
if rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    cargo build "${quiet[@]}" --profile cni -p nestbox-cni --target "$target" >&2
    echo "$PWD/target/$target/cni/nestbox-cni"
else
    echo "build-cni.sh: the $target target is not available; using the glibc build" >&2
    cargo build "${quiet[@]}" --profile cni -p nestbox-cni >&2
    echo "$PWD/target/cni/nestbox-cni"
fi
