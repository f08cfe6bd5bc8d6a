#!/usr/bin/env bash
# Builds llmship's test cluster (docs/testcluster.md) once per machine, from Go modules:
#   etcd 3.6.4                                                go.etcd.io/etcd/server/v3 (the version k8s 1.34 pins)
#   kube-apiserver, kube-controller-manager, kube-scheduler   k8s.io/kubernetes
#   the KServe controller manager                             github.com/kserve/kserve/cmd/manager
#   kwok (fake nodes and pod status)                          sigs.k8s.io/kwok/cmd/kwok
# and the optional parts: keda (the KEDA operator and its admission webhooks, v2.20.2,
# github.com/kedacore/keda/v2/cmd/{operator,webhooks}).
#
# Each part goes to its own folder under ${LLMSHIP_TESTCLUSTER_DIR:-~/.cache/llmship/testcluster},
# named after its version and a hash of its wrapper module (go.mod, go.sum) and of the build
# recipe below, so a changed pin builds anew and an unchanged one is never rebuilt. Go's build
# cache (go env GOCACHE) carries compiled packages across builds on one machine.
# A binary found in $KUBEBUILDER_ASSETS (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler; controller-runtime's envtest layout) is used instead of building one.
#
#   build.sh                 build what is missing (with the optional parts in
#                            $LLMSHIP_TESTCLUSTER_EXTRAS, by default: keda)
#   build.sh --extras keda   build the optional parts named (comma-separated; "" for none)
#   build.sh --print-env     print NAME=path for every part (nothing is built; no Go needed)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${LLMSHIP_TESTCLUSTER_DIR:-$HOME/.cache/llmship/testcluster}"
ASSETS="${KUBEBUILDER_ASSETS:-}"

# Bump when a flag below changes what a build produces.
RECIPE="recipe=2 cgo=0 ldflags=-s,-w trimpath"
KUBE_VERSION=v1.34.4
KSERVE_VERSION=v0.20.0
KWOK_VERSION=v0.8.0
KEDA_VERSION=v2.20.2
KUBE_LDFLAGS="-s -w -X k8s.io/component-base/version.gitVersion=${KUBE_VERSION} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34"

mode=build
extras="${LLMSHIP_TESTCLUSTER_EXTRAS-keda}"  # optional parts built by default; "" for none
while [ $# -gt 0 ]; do
  case "$1" in
    --print-env) mode=print ;;
    --extras) extras="$2"; shift ;;
    --extras=*) extras="${1#--extras=}" ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

# The folder of one part: <name>-<version>-<hash of its module files and the recipe>.
part_dir() {
  local name="$1" version="$2" hash
  hash="$( { echo "$RECIPE"; cat "$HERE/go/$name/go.mod" "$HERE/go/$name/go.sum"; } | sha256sum | cut -c1-12)"
  echo "$CACHE/$name-$version-$hash"
}

asset() {  # a binary from KUBEBUILDER_ASSETS, if that folder has it
  [ -n "$ASSETS" ] && [ -x "$ASSETS/$1" ] && echo "$ASSETS/$1" || true
}

KUBE_DIR="$(part_dir kube "$KUBE_VERSION")"
KSERVE_DIR="$(part_dir kserve "$KSERVE_VERSION")"
KWOK_DIR="$(part_dir kwok "$KWOK_VERSION")"
KEDA_DIR="$(part_dir keda "$KEDA_VERSION")"

kube_bin() {  # where the harness finds one of the Kubernetes binaries
  local a; a="$(asset "$1")"
  if [ -n "$a" ]; then echo "$a"; else echo "$KUBE_DIR/bin/$1"; fi
}

print_env() {
  echo "TESTCLUSTER_CACHE=$CACHE"
  echo "ETCD=$(kube_bin etcd)"
  echo "KUBE_APISERVER=$(kube_bin kube-apiserver)"
  echo "KUBE_CONTROLLER_MANAGER=$(kube_bin kube-controller-manager)"
  echo "KUBE_SCHEDULER=$(kube_bin kube-scheduler)"
  echo "KUBE_VERSION=$KUBE_VERSION"
  echo "KSERVE_MANAGER=$KSERVE_DIR/bin/manager"
  echo "KSERVE_CONFIG=$KSERVE_DIR/share/config"
  echo "GATEWAY_API_CRDS=$KSERVE_DIR/share/gateway-api-crds"
  echo "KSERVE_VERSION=$KSERVE_VERSION"
  echo "KWOK=$KWOK_DIR/bin/kwok"
  echo "KWOK_STAGES=$KWOK_DIR/share/stages"
  echo "KWOK_FAULT_STAGES=$HERE/kwok/fault-stages.yaml"
  echo "KWOK_VERSION=$KWOK_VERSION"
  echo "KEDA_OPERATOR=$KEDA_DIR/bin/operator"
  echo "KEDA_WEBHOOKS=$KEDA_DIR/bin/webhooks"
  echo "KEDA_CONFIG=$KEDA_DIR/share/config"
  echo "KEDA_VERSION=$KEDA_VERSION"
}

if [ "$mode" = print ]; then print_env; exit 0; fi

command -v go >/dev/null || { echo "build.sh: Go is needed to build the test cluster (https://go.dev/doc/install; 1.26 or newer)" >&2; exit 1; }
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false -trimpath"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9  # one builder at a time on a machine

log() { echo "testcluster: $*" >&2; }

# build_part NAME DIR [BIN=]PACKAGE... : go build the packages of go/NAME into DIR/bin (the
# binary named BIN, or after the package), then let a hook (share_NAME) copy configuration
# into DIR/share; DIR appears only when complete. Packages without BIN= build in one go build.
build_part() {
  local name="$1" dir="$2"; shift 2
  local missing=() spec bin
  for spec in "$@"; do
    bin="${spec%%=*}"; [ "$bin" != "$spec" ] || bin="${spec##*/}"
    [ -x "$dir/bin/$bin" ] || missing+=("$spec")
  done
  if [ -e "$dir/.complete" ] && [ ${#missing[@]} -eq 0 ]; then return 0; fi
  local tmp="$dir.tmp.$$" start=$SECONDS together=() bins=()
  rm -rf "$tmp"; mkdir -p "$tmp/bin" "$tmp/share"
  for spec in "${missing[@]}"; do
    if [ "${spec%%=*}" != "$spec" ]; then bins+=("${spec%%=*}"); else together+=("$spec"); bins+=("${spec##*/}"); fi
  done
  log "building $name (${bins[*]}) into $dir (cold: minutes; see docs/testcluster.md)"
  (
    cd "$HERE/go/$name"
    if [ ${#together[@]} -gt 0 ]; then go build -ldflags="${LDFLAGS:--s -w}" -o "$tmp/bin/" "${together[@]}"; fi
    for spec in "${missing[@]}"; do
      if [ "${spec%%=*}" != "$spec" ]; then go build -ldflags="-s -w" -o "$tmp/bin/${spec%%=*}" "${spec#*=}"; fi
    done
  )
  if [ -e "$dir/.complete" ]; then  # a part built before without some binary (KUBEBUILDER_ASSETS)
    for bin in "${bins[@]}"; do mv "$tmp/bin/$bin" "$dir/bin/"; done
    rm -rf "$tmp"
  else
    if declare -F "share_$name" >/dev/null; then "share_$name" "$tmp/share"; fi
    touch "$tmp/.complete"
    rm -rf "$dir"; mv "$tmp" "$dir"
    local old  # builds of older pins of this part
    for old in "$CACHE/$name"-*; do
      case "$old" in "$dir"|*.tmp.*) ;; *) [ -e "$old/.complete" ] && rm -rf "$old" ;; esac
    done
  fi
  echo "$name: ${bins[*]} built in $((SECONDS - start)) s with $(go version)" >> "$dir/BUILD-INFO"
  log "$name: ${bins[*]} built in $((SECONDS - start)) s"
}

module_dir() {  # the module cache folder of a dependency of go/NAME
  (cd "$HERE/go/$1" && go list -m -f '{{.Dir}}' "$2")
}

share_kserve() {  # KServe's own config/ (CRDs, webhooks, inferenceservice-config, RBAC), and the
  # Gateway API CRDs (standard channel) of the sigs.k8s.io/gateway-api release KServe requires
  cp -r "$(module_dir kserve github.com/kserve/kserve)/config" "$1/config"
  cp -r "$(module_dir kserve sigs.k8s.io/gateway-api)/config/crd/standard" "$1/gateway-api-crds"
  chmod -R u+w "$1/config" "$1/gateway-api-crds"
}

share_keda() {  # KEDA's own config/ (CRDs, RBAC, the admission webhook configuration)
  cp -r "$(module_dir keda github.com/kedacore/keda/v2)/config" "$1/config"
  chmod -R u+w "$1/config"
}

share_kwok() {  # KWOK's stock stages: nodes become Ready, pods Running and Ready, deletes finish
  local src; src="$(module_dir kwok sigs.k8s.io/kwok)/kustomize/stage"
  mkdir -p "$1/stages"
  cp "$src/node/fast/node-initialize.yaml" "$src/node/heartbeat/node-heartbeat.yaml" \
     "$src/pod/fast/pod-ready.yaml" "$src/pod/fast/pod-complete.yaml" "$src/pod/fast/pod-delete.yaml" \
     "$1/stages/"
  chmod -R u+w "$1/stages"
}

# One go build for the Kubernetes binaries, so their shared packages compile once; etcd from
# the same module graph (k8s.io/kubernetes v1.34.4 requires go.etcd.io/etcd/server/v3 v3.6.4).
kube_pkgs=()
for b in kube-apiserver kube-controller-manager kube-scheduler; do
  [ -n "$(asset "$b")" ] || kube_pkgs+=("k8s.io/kubernetes/cmd/$b")
done
[ -n "$(asset etcd)" ] || kube_pkgs+=("etcd=go.etcd.io/etcd/server/v3")
LDFLAGS="$KUBE_LDFLAGS" build_part kube "$KUBE_DIR" "${kube_pkgs[@]}"
build_part kserve "$KSERVE_DIR" github.com/kserve/kserve/cmd/manager
build_part kwok "$KWOK_DIR" sigs.k8s.io/kwok/cmd/kwok

for extra in ${extras//,/ }; do
  case "$extra" in
    keda) build_part keda "$KEDA_DIR" github.com/kedacore/keda/v2/cmd/operator github.com/kedacore/keda/v2/cmd/webhooks ;;
    *) log "no optional part named $extra (see docs/testcluster.md)"; exit 2 ;;
  esac
done
