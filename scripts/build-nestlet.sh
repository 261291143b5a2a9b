#!/usr/bin/env bash
# Build the `nestlet` binary that gets installed and benchmarked: the `nestlet` profile
# (Cargo.toml: small code, fat LTO, one codegen unit, stripped). Prints the DIRECTORY
# holding it as the last line of stdout.
#
# Why: nestlet runs as long as the node; its resident memory is paid next to the pods'
# shims, and most of it is the pages of its own code. Against the release build (-O3,
# thin LTO) the text is about 40 % smaller, and so are the code pages it keeps resident.
#   scripts/build-nestlet.sh [--quiet]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
quiet=()
[ "${1:-}" = --quiet ] && quiet=(--quiet)
cargo build "${quiet[@]}" --profile nestlet -p nestlet --bin nestlet >&2
dir="${CARGO_TARGET_DIR:-$PWD/target}/nestlet"
[ -x "$dir/nestlet" ] || { echo "build-nestlet.sh: $dir/nestlet was not built" >&2; exit 1; }
echo "$dir"
