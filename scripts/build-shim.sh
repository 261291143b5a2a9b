#!/usr/bin/env bash
# Build the containerd-shim-nestbox-v2 binary that gets installed, tested by scripts/test.sh
# and benchmarked: a static musl build (x86_64-unknown-linux-musl) with the `shim` profile
# (Cargo.toml: small code, whole-program LTO). Prints its path as the last line of stdout.
#
# Why: one shim process lives as long as its pod, so its resident memory is paid per pod. A
# static binary maps no libc.so, ld.so or libgcc_s (about 1.6 MiB of resident pages with
# glibc), and small code keeps the pages it touches few. Falls back to a glibc build
# (target/shim/containerd-shim-nestbox-v2) when the musl target cannot be installed, and
# says so on stderr.
#   scripts/build-shim.sh [--quiet]
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
    cargo build "${quiet[@]}" --profile shim -p nestbox-shim --target "$target" >&2
    echo "$PWD/target/$target/shim/containerd-shim-nestbox-v2"
else
    echo "build-shim.sh: the $target target is not available; using the glibc build" >&2
    cargo build "${quiet[@]}" --profile shim -p nestbox-shim >&2
    echo "$PWD/target/shim/containerd-shim-nestbox-v2"
fi
