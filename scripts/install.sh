#!/bin/sh
# Install nestbox's CNI plugins and overlay agent: copy nestbox-cni (the static musl
# build from scripts/build-cni.sh, which this runs) and target/release/nestbox-overlayd
# into the CNI bin dir and link the plugin names to nestbox-cni
# (nestbox-{bridge,host-local,loopback,vxlan,host-gw}). The reference plugins' names
# (bridge, host-local, loopback) and flannel's are only taken with --drop-in.
# With --bin-dir DIR, also install the runtime (nestbox, nestbox-pause: the static build
# from scripts/build-runtime.sh) and the containerd shim (containerd-shim-nestbox-v2, the
# static build from scripts/build-shim.sh) into DIR, side by side (the shim runs the
# nestbox beside it): DIR must be on containerd's PATH, e.g. /usr/local/bin.
#   scripts/install.sh [--cni-bin-dir DIR] [--drop-in] [--bin-dir DIR]
# NESTBOX_CNI_BIN / NESTBOX_OVERLAYD_BIN / NESTBOX_SHIM_BIN / NESTBOX_BIN_DIR override the
# binaries' paths (NESTBOX_RUNTIME_DIR, else NESTBOX_BIN_DIR: where nestbox and nestbox-pause
# are).
set -eu

bin_dir=/opt/cni/bin
drop_in=0
rt_dir=
while [ $# -gt 0 ]; do
    case "$1" in
        --cni-bin-dir) bin_dir="$2"; shift 2 ;;
        --cni-bin-dir=*) bin_dir="${1#*=}"; shift ;;
        --drop-in) drop_in=1; shift ;;
        --bin-dir) rt_dir="$2"; shift 2 ;;
        --bin-dir=*) rt_dir="${1#*=}"; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${NESTBOX_CNI_BIN:-}" ]; then
    cni_src=$NESTBOX_CNI_BIN
elif command -v cargo >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/cargo" ]; then
    cni_src=$(bash "$root/scripts/build-cni.sh" --quiet | tail -1)
else
    cni_src=$root/target/release/nestbox-cni
fi
overlayd_src="${NESTBOX_OVERLAYD_BIN:-$root/target/release/nestbox-overlayd}"
for src in "$cni_src" "$overlayd_src"; do
    if [ ! -x "$src" ]; then
        echo "install.sh: $src not found; run: cargo build --release -p nestbox-cni -p nestbox-overlayd" >&2
        exit 1
    fi
done

mkdir -p "$bin_dir"

# Copy under a temp name and rename: a running plugin or agent keeps its old inode.
copy() {
    cp "$1" "$bin_dir/.$2.new"
    chmod 0755 "$bin_dir/.$2.new"
    mv -f "$bin_dir/.$2.new" "$bin_dir/$2"
}

# Link atomically too: a runtime calling the plugin meanwhile finds either link.
link() {
    ln -sfn nestbox-cni "$bin_dir/.$1.new"
    mv -fT "$bin_dir/.$1.new" "$bin_dir/$1"
}

copy "$cni_src" nestbox-cni
copy "$overlayd_src" nestbox-overlayd

for p in bridge host-local loopback vxlan host-gw; do
    link "nestbox-$p"
done
if [ "$drop_in" = 1 ]; then
    for p in bridge host-local loopback flannel; do
        link "$p"
    done
fi
echo "installed nestbox-cni and nestbox-overlayd into $bin_dir$( [ "$drop_in" = 1 ] && echo ' (drop-in: bridge, host-local, loopback, flannel)')"

if [ -n "$rt_dir" ]; then
    if [ -n "${NESTBOX_RUNTIME_DIR:-}" ]; then
        rt_src=$NESTBOX_RUNTIME_DIR
    elif [ -n "${NESTBOX_BIN_DIR:-}" ]; then
        rt_src=$NESTBOX_BIN_DIR
    elif command -v cargo >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/cargo" ]; then
        rt_src=$(bash "$root/scripts/build-runtime.sh" --quiet | tail -1)
    else
        rt_src=$root/target/release
    fi
    if [ -n "${NESTBOX_SHIM_BIN:-}" ]; then
        shim_src=$NESTBOX_SHIM_BIN
    elif command -v cargo >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/cargo" ]; then
        shim_src=$(bash "$root/scripts/build-shim.sh" --quiet | tail -1)
    else
        shim_src=$rt_src/containerd-shim-nestbox-v2
    fi
    for src in "$rt_src/nestbox" "$rt_src/nestbox-pause" "$shim_src"; do
        if [ ! -x "$src" ]; then
            echo "install.sh: $src not found; run: cargo build --release -p nestbox-runtime -p nestbox-shim" >&2
            exit 1
        fi
    done
    bin_dir=$rt_dir
    mkdir -p "$bin_dir"
    copy "$rt_src/nestbox" nestbox
    copy "$rt_src/nestbox-pause" nestbox-pause
    copy "$shim_src" containerd-shim-nestbox-v2
    echo "installed nestbox, nestbox-pause and containerd-shim-nestbox-v2 into $rt_dir (runtime type io.containerd.nestbox.v2)"
fi
