#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager, kube-scheduler and kubectl 1.20.2 from Debian's `kubernetes`
# source package (it keeps vendor/, so no Go module downloads are needed) and cache the binaries.
#
#   bash scripts/kube-build.sh            # prints the bin dir on its last stdout line
#
# Cache: $NESTBOX_KUBE_CACHE (default /var/cache/nestbox/kube-1.20.2); binaries in <cache>/bin,
# the unpacked source and the GOPATH/GOCACHE under <cache>/build (kept so a rebuild is incremental).
# When all binaries are present it prints the bin dir and exits at once.
# Needs root (apt). Downloads only from the Debian mirror named in /etc/apt/sources.list.d/debian.sources.
set -euo pipefail

VERSION=1.20.2
CACHE="${NESTBOX_KUBE_CACHE:-/var/cache/nestbox/kube-$VERSION}"
BIN="$CACHE/bin"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
# Bump when the recipe changes in a way that makes cached binaries wrong.
# 2: vendored reflect2 1.0.1 replaced by Debian's 1.0.2 (1.0.1 crashes under Go >= 1.18).
RECIPE=2

have_all() {
  local b
  [ "$(cat "$BIN/.recipe" 2>/dev/null)" = "$RECIPE" ] || return 1
  for b in "${BINARIES[@]}"; do
    [ -x "$BIN/$b" ] || return 1
  done
}

if have_all; then
  echo "$BIN"
  exit 0
fi

BUILD="$CACHE/build"
LOGFILE="$BUILD/build.log"
log() { echo "kube-build: $*" >&2; }
die() {
  echo "kube-build: error: $*" >&2
  if [ -s "$LOGFILE" ]; then
    echo "kube-build: last lines of $LOGFILE:" >&2
    tail -n 25 "$LOGFILE" >&2
  fi
  exit 1
}
trap 'rc=$?; [ $rc -eq 0 ] || echo "kube-build: FAILED (exit $rc); full log: $LOGFILE" >&2' EXIT

[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get source/install)"

mkdir -p "$BUILD" "$BIN" || die "cannot create $BUILD"
# One builder at a time (e.g. two test binaries on a fresh machine); the other waits, then
# finds the binaries.
exec 9>"$CACHE/.lock"
flock 9
if have_all; then
  log "built by a concurrent run"
  echo "$BIN"
  exit 0
fi
: >"$LOGFILE"
log "building kube $VERSION into $BIN (log: $LOGFILE)"
started=$(date +%s)

# 1. deb-src entry for the same mirror and suites as the binary entry of debian.sources.
SRC_FILE=/etc/apt/sources.list.d/debian.sources
[ -r "$SRC_FILE" ] || die "$SRC_FILE not found: cannot tell which Debian mirror to use"
# The first stanza that lists "Types: deb" with the main archive (not -security).
read -r uri suites < <(awk '
  /^[[:space:]]*$/ { if (t && u && s && u !~ /security/) { print u, s; exit } t=u=s=""; next }
  /^Types:/  { if ($0 ~ /[[:space:]]deb([[:space:]]|$)/) t=1 }
  /^URIs:/   { u=$2 }
  /^Suites:/ { $1=""; sub(/^ /,""); s=$0 }
  END { if (t && u && s && u !~ /security/) print u, s }' "$SRC_FILE" | head -n1) || true
[ -n "${uri:-}" ] && [ -n "${suites:-}" ] || die "could not read URIs/Suites from $SRC_FILE"
need_src=1
if [ -e /etc/apt/sources.list.d/nestbox-deb-src.sources ] ||
   grep -qE '^Types:.*deb-src' "$SRC_FILE" ||
   cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
     grep -qF "deb-src $uri "; then
  need_src=0
fi
if [ $need_src -eq 1 ]; then
  dst=/etc/apt/sources.list.d/nestbox-deb-src.sources
  log "adding deb-src for $uri ($suites) in $dst"
  cat >"$dst" <<EOF
Types: deb-src
URIs: $uri
Suites: $suites
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
fi

export DEBIAN_FRONTEND=noninteractive
PKGS=(golang-1.19-go rsync make dpkg-dev golang-github-modern-go-reflect2-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
SRCDIR=$(find "$BUILD/src-pkg" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' 2>/dev/null | head -n1 || true)
if [ $need_src -eq 1 ] || [ ${#missing[@]} -gt 0 ] || [ -z "$SRCDIR" ] || [ ! -f "$SRCDIR/.nestbox-unpacked" ]; then
  log "apt-get update"
  apt-get update -qq >>"$LOGFILE" 2>&1 || die "apt-get update failed (see $LOGFILE)"
fi
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$LOGFILE" 2>&1 \
    || die "apt-get install ${missing[*]} failed (see $LOGFILE)"
fi
GOROOT_119=/usr/lib/go-1.19
[ -x "$GOROOT_119/bin/go" ] || die "$GOROOT_119/bin/go missing after installing golang-1.19-go"

# 2. The source tree (kept in the cache; fetched once).
if [ -z "$SRCDIR" ] || [ ! -f "$SRCDIR/.nestbox-unpacked" ]; then
  rm -rf "$BUILD/src-pkg"
  mkdir -p "$BUILD/src-pkg"
  log "apt-get source kubernetes"
  (cd "$BUILD/src-pkg" && apt-get source -qq kubernetes) >>"$LOGFILE" 2>&1 \
    || die "apt-get source kubernetes failed (see $LOGFILE)"
  SRCDIR=$(find "$BUILD/src-pkg" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -n1)
  [ -n "$SRCDIR" ] || die "no kubernetes-* directory after apt-get source"
  touch "$SRCDIR/.nestbox-unpacked"
fi
log "source tree: $SRCDIR"
[ -d "$SRCDIR/vendor" ] || die "$SRCDIR has no vendor/ directory: cannot build offline"

# 3. Go 1.19 fix: kube 1.20 vendors github.com/modern-go/reflect2 v1.0.1, whose copy of the
# runtime's map iterator predates Go 1.18; the apiserver then dies with "fatal error: fault"
# in mapiterinit when it encodes some maps (e.g. a Node status patch). v1.0.2 (same API,
# Debian package golang-github-modern-go-reflect2-dev) links to the runtime's own iterator.
R2_SRC=/usr/share/gocode/src/github.com/modern-go/reflect2
R2_DST="$SRCDIR/vendor/github.com/modern-go/reflect2"
[ -f "$R2_SRC/go_above_118.go" ] || die "$R2_SRC/go_above_118.go missing (golang-github-modern-go-reflect2-dev >= 1.0.2 needed)"
if [ ! -f "$R2_DST/go_above_118.go" ]; then
  log "replacing vendored reflect2 1.0.1 with $R2_SRC (1.0.2)"
  rm -f "$R2_DST"/*.go "$R2_DST"/*.s
  cp "$R2_SRC"/*.go "$R2_SRC"/*.s "$R2_DST"/
fi

# 4. GOPATH layout k8s.io/kubernetes -> source tree.
GOPATH_DIR="$BUILD/gopath"
mkdir -p "$GOPATH_DIR/src/k8s.io"
ln -sfn "$SRCDIR" "$GOPATH_DIR/src/k8s.io/kubernetes"

export GOPATH="$GOPATH_DIR"
export GOROOT="$GOROOT_119"
export PATH="$GOROOT_119/bin:$PATH"
export GOCACHE="$BUILD/gocache"
export GOFLAGS="-mod=vendor"
export GO111MODULE=on
export GOPROXY=off
export CGO_ENABLED=0
export KUBE_GIT_VERSION="v$VERSION"
export KUBE_GIT_TREE_STATE=clean
log "go: $(go version)"

# 5. Build. The Makefile (hack/make-rules/build.sh) first; direct `go build` if it fails.
OUT="$GOPATH_DIR/src/k8s.io/kubernetes/_output/local/bin/linux/amd64"
built_dir=""
WHAT=""
for b in "${BINARIES[@]}"; do WHAT="$WHAT cmd/$b"; done
WHAT="${WHAT# }"
log "make WHAT=\"$WHAT\" (takes ~7 min on 2 cores)"
if (cd "$GOPATH_DIR/src/k8s.io/kubernetes" && \
    make WHAT="$WHAT" KUBE_BUILD_PLATFORMS=linux/amd64) \
    >>"$LOGFILE" 2>&1; then
  built_dir="$OUT"
else
  log "make failed (tail of $LOGFILE below); falling back to go build"
  tail -n 20 "$LOGFILE" >&2 || true
  direct="$BUILD/direct-out"
  mkdir -p "$direct"
  ldflags="-s -w -X k8s.io/component-base/version.gitVersion=v$VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=20 -X k8s.io/component-base/version.gitTreeState=clean"
  for b in "${BINARIES[@]}"; do
    log "go build ./cmd/$b"
    (cd "$GOPATH_DIR/src/k8s.io/kubernetes" && go build -mod=vendor -trimpath -ldflags "$ldflags" -o "$direct/$b" "./cmd/$b") \
      >>"$LOGFILE" 2>&1 || die "go build ./cmd/$b failed (see $LOGFILE)"
  done
  built_dir="$direct"
fi

for b in "${BINARIES[@]}"; do
  [ -x "$built_dir/$b" ] || die "$built_dir/$b was not produced (see $LOGFILE)"
  # Copy then rename, so a reader never sees a half-written binary.
  cp "$built_dir/$b" "$BIN/.$b.tmp"
  chmod 0755 "$BIN/.$b.tmp"
  mv -f "$BIN/.$b.tmp" "$BIN/$b"
done
"$BIN/kube-apiserver" --version >&2 || die "built kube-apiserver does not run"
echo "$RECIPE" >"$BIN/.recipe"
log "done in $(( $(date +%s) - started )) s"
echo "$BIN"
