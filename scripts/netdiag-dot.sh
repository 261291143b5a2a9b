#!/usr/bin/env bash
# Render `nestbox-netdiag doctor --dot` as a picture with Debian's graphviz: each hop of
# the pod's path (pod → veth → bridge → node → overlay → underlay → peers) filled green,
# orange or red by its worst check.
#   scripts/netdiag-dot.sh POD|CONTAINER-ID|NETNS [OUT.svg|OUT.png] [doctor options…]
# Exits with doctor's status (0 all pass, 1 a failure, 2 warnings only).
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: $0 POD|CONTAINER-ID|NETNS [OUT.svg|OUT.png] [doctor options...]" >&2; exit 64; }
target=$1; shift
out=${1:-netdiag-path.svg}; [ $# -ge 1 ] && shift
command -v dot >/dev/null || { echo "graphviz is not installed: apt-get install graphviz" >&2; exit 1; }
bin=${NESTBOX_NETDIAG:-$(command -v nestbox-netdiag || echo "$(dirname "$0")/../target/release/nestbox-netdiag")}
fmt=${out##*.}
"$bin" doctor "$target" --dot "$@" > "$out.dot"
status=$?
if [ ! -s "$out.dot" ]; then rm -f "$out.dot"; exit "$status"; fi
dot -T"$fmt" "$out.dot" -o "$out" && rm -f "$out.dot"
echo "wrote $out (doctor status $status)" >&2
exit "$status"
