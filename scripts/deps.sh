#!/usr/bin/env bash
# Install everything nestbox's demo, tests and benchmarks use on a fresh Debian 12 machine (as root).
# Idempotent: packages already present are skipped quickly.
set -euo pipefail

PKGS=(
  # build (protoc: the CRI client of the shim tests compiles the CRI protos)
  # (libc6-dev and libseccomp-dev: their static archives link the runtime, scripts/build-runtime.sh)
  pkg-config libc6-dev libseccomp-dev gcc protobuf-compiler
  # the test image and tools the tests drive (bsdutils: `script`, a pty for ctr -t)
  busybox-static iproute2 util-linux bsdutils procps psmisc jq file kmod
  nftables iptables iputils-ping wget
  # real peers
  runc crun containerd podman containernetworking-plugins etcd-server openssl curl
  # nestlet: a real registry, and the tools that make and push the test image
  docker-registry skopeo umoci
  # benchmarks
  hyperfine time iperf3
  # nestbox-netdiag: BPF programs built by clang against libbpf's headers; bpftool to
  # inspect them, graphviz to render `doctor --dot`
  clang llvm libbpf-dev bpftool graphviz
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Rust toolchain comes from rustup on these machines; make sure cargo is on PATH.
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null || { echo "deps: cargo not found (install Rust with rustup)" >&2; exit 1; }
