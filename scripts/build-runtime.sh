#!/usr/bin/env bash
# Build the `nestbox` runtime and `nestbox-pause` binaries that get installed, tested by
# scripts/test.sh and benchmarked: the `runtime` profile (Cargo.toml: small code, fat LTO,
# panic=abort), linked statically against glibc and libseccomp, non-PIE. Prints the
# DIRECTORY holding both binaries as the last line of stdout.
#
# Why: `nestbox` is exec'd for every container operation (and re-execs itself once for
# create/run/exec) and lives a few milliseconds. A dynamic PIE binary spends a good part of
# that in ld.so: mapping libc, libseccomp and libgcc_s, relocating, resolving symbols. A
# static non-PIE binary maps one file and starts at its entry point.
#
# `--target` is explicit so RUSTFLAGS reach only the target's crates, not build scripts and
# proc-macros (which must stay dynamic host binaries). libseccomp's static archive comes
# with libseccomp-dev (scripts/deps.sh).
#   scripts/build-runtime.sh [--quiet]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
target=x86_64-unknown-linux-gnu
quiet=()
[ "${1:-}" = --quiet ] && quiet=(--quiet)

libdir=$(pkg-config --variable=libdir libseccomp 2>/dev/null || echo /usr/lib/x86_64-linux-gnu)
if [ ! -f "$libdir/libseccomp.a" ]; then
    echo "build-runtime.sh: $libdir/libseccomp.a not found (install libseccomp-dev)" >&2
    exit 1
fi
export LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH="$libdir"
export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static"
cargo build "${quiet[@]}" --profile runtime -p nestbox-runtime --bin nestbox --target "$target" >&2
dir="${CARGO_TARGET_DIR:-$PWD/target}/$target/runtime"
for b in nestbox nestbox-pause; do
    [ -x "$dir/$b" ] || { echo "build-runtime.sh: $dir/$b was not built" >&2; exit 1; }
done
echo "$dir"
