#!/bin/sh
# Install nestbox's CNI plugins: copy target/release/nestbox-cni into the CNI bin dir and
# link the plugin names to it. The reference plugins' names (bridge, host-local,
# loopback) are only taken with --drop-in.
#   scripts/install.sh [--cni-bin-dir DIR] [--drop-in]
set -eu

bin_dir=/opt/cni/bin
drop_in=0
while [ $# -gt 0 ]; do
    case "$1" in
        --cni-bin-dir) bin_dir="$2"; shift 2 ;;
        --cni-bin-dir=*) bin_dir="${1#*=}"; shift ;;
        --drop-in) drop_in=1; shift ;;
        -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
src="${NESTBOX_CNI_BIN:-$root/target/release/nestbox-cni}"
if [ ! -x "$src" ]; then
    echo "install.sh: $src not found; run: cargo build --release -p nestbox-cni" >&2
    exit 1
fi

mkdir -p "$bin_dir"
# Copy under a temp name and rename: a running plugin keeps its old inode.
cp "$src" "$bin_dir/.nestbox-cni.new"
chmod 0755 "$bin_dir/.nestbox-cni.new"
mv -f "$bin_dir/.nestbox-cni.new" "$bin_dir/nestbox-cni"

for p in bridge host-local loopback; do
    ln -sfn nestbox-cni "$bin_dir/nestbox-$p"
    if [ "$drop_in" = 1 ]; then
        ln -sfn nestbox-cni "$bin_dir/$p.new" && mv -fT "$bin_dir/$p.new" "$bin_dir/$p"
    fi
done
echo "installed nestbox-cni into $bin_dir$( [ "$drop_in" = 1 ] && echo ' (drop-in: bridge, host-local, loopback)')"
