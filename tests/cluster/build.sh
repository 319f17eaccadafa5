#!/usr/bin/env bash
# Builds the binaries of the cluster tests once per version set, into a cache outside the checkout:
# ${FORKRL_K8S_CACHE:-$HOME/.cache/forkrl/k8s}/<version-set>/{bin,crds,kwok/stages}. Two groups, each
# its own version set so that adding or bumping one never rebuilds the other:
#   control plane (default): etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl,
#                            kwok, kuberay, helm
#   nodes (--nodes):         kubelet, kube-proxy, coredns (the real worker nodes of tests/cluster/nodes)
#
# Every binary comes from its own Go module under tests/cluster/modules/<name>/ (its go.mod pins the
# upstream release and names the upstream main package in a `tool` directive), so one tool's
# dependencies never bump another's. Binaries are static (CGO_ENABLED=0) and carry their release
# version through -ldflags -X: an unstamped kube-apiserver reports v0.0.0, which breaks helm and kwok.
#
# Usage: build.sh [--nodes] [--print-bin-dir] [NAME...]   (default: every binary of the group)
# Progress goes to stderr; the last line on stdout is the bin directory.
# Env: FORKRL_K8S_CACHE (cache root), FORKRL_K8S_BUILD_JOBS (go build -p, default 2).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MODULES="$HERE/modules"
CACHE_ROOT="${FORKRL_K8S_CACHE:-$HOME/.cache/forkrl/k8s}"
JOBS="${FORKRL_K8S_BUILD_JOBS:-2}"
# Bump when the way binaries are built changes (flags, stamping): it renames the version set.
RECIPE=1
CONTROL=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kuberay helm)
NODES=(kubelet kube-proxy coredns)
GROUP=control
if [[ "${1:-}" == "--nodes" ]]; then
  GROUP=nodes
  shift
fi

log() { printf '[forkrl k8s build] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The version a module directory's go.mod requires of a module path (no go command needed).
module_version() {
  awk -v m="$2" '($1 == m) { print $2; exit } ($1 == "require" && $2 == m) { print $3; exit }' \
    "$MODULES/$1/go.mod"
}

KUBE_VERSION=$(module_version kube-apiserver k8s.io/kubernetes)
ETCD_VERSION=$(module_version etcd go.etcd.io/etcd/server/v3)
KUBERAY_VERSION=$(module_version kuberay github.com/ray-project/kuberay/ray-operator)
KWOK_VERSION=$(module_version kwok sigs.k8s.io/kwok)
HELM_VERSION=$(module_version helm helm.sh/helm/v3)
COREDNS_VERSION=$(module_version coredns github.com/coredns/coredns)
for v in KUBE_VERSION ETCD_VERSION KUBERAY_VERSION KWOK_VERSION HELM_VERSION COREDNS_VERSION; do
  [[ -n "${!v}" ]] || die "cannot read $v from the go.mod files under $MODULES"
done
for name in kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
  [[ "$(module_version $name k8s.io/kubernetes)" == "$KUBE_VERSION" ]] ||
    die "modules/$name/go.mod pins a different k8s.io/kubernetes than modules/kube-apiserver ($KUBE_VERSION)"
done

# A set is named by its versions (readable) and a digest of its modules' go.mod/go.sum (and main.go,
# for a module with its own main package), so a replace or dependency change lands in a new directory.
group_digest() {
  local names=("$@")
  (cd "$MODULES" && {
    echo "recipe=$RECIPE"
    for name in "${names[@]}"; do cat "$name/go.mod"; done
    for name in "${names[@]}"; do cat "$name/go.sum"; done
    for name in "${names[@]}"; do [[ ! -f "$name/main.go" ]] || cat "$name/main.go"; done
  } | sha256sum | cut -c1-10)
}
if [[ $GROUP == control ]]; then
  ALL=("${CONTROL[@]}")
  # Sorted as the shell's glob sorted them when this digest covered */go.mod: existing caches stay valid.
  DIGEST=$(group_digest $(printf '%s\n' "${CONTROL[@]}" | LC_ALL=C sort))
  SET="k8s-${KUBE_VERSION}_etcd-${ETCD_VERSION}_kuberay-${KUBERAY_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}_${DIGEST}"
else
  ALL=("${NODES[@]}")
  DIGEST=$(group_digest "${NODES[@]}")
  SET="nodes-k8s-${KUBE_VERSION}_coredns-${COREDNS_VERSION}_${DIGEST}"
fi
SET_DIR="$CACHE_ROOT/$SET"
BIN_DIR="$SET_DIR/bin"
CRD_DIR="$SET_DIR/crds"

if [[ "${1:-}" == "--print-bin-dir" ]]; then
  echo "$BIN_DIR"
  exit 0
fi
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=("${ALL[@]}")
for name in "${TARGETS[@]}"; do
  [[ " ${ALL[*]} " == *" $name "* ]] || die "unknown binary '$name' in the $GROUP group (known: ${ALL[*]})"
done

# Third-party YAML the fixture needs, copied from the pinned modules (never committed here).
KWOK_STAGE_DIR="$SET_DIR/kwok/stages"
KWOK_STAGES=(node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease
  pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete)
data_present() {
  [[ $GROUP == nodes ]] || [[ -f "$CRD_DIR/kuberay/ray.io_rayjobs.yaml" && -f "$KWOK_STAGE_DIR/pod-delete.yaml" ]]
}
all_present() {
  local name
  for name in "${TARGETS[@]}"; do [[ -x "$BIN_DIR/$name" ]] || return 1; done
  data_present
}

# Warm path: nothing to do, no go command, no lock.
if all_present; then
  echo "$BIN_DIR"
  exit 0
fi

command -v go >/dev/null || die "the go command is not on PATH; install Go >= 1.26 to build the control plane"
need_go=$(awk '$1 == "go" { print $2; exit }' "$MODULES/kube-apiserver/go.mod")
have_go=$(go env GOVERSION | sed 's/^go//')
if [[ "$(printf '%s\n%s\n' "$need_go" "$have_go" | sort -V | head -1)" != "$need_go" ]]; then
  die "go $have_go is older than the go $need_go the pinned modules need (export GOTOOLCHAIN=go$need_go or newer)"
fi

mkdir -p "$BIN_DIR" "$CRD_DIR" "$SET_DIR/logs"
# One builder per version set: a second caller waits here, then finds the binaries built.
exec 9>"$SET_DIR/.build.lock"
flock 9

export CGO_ENABLED=0 GOWORK=off GOFLAGS="-mod=readonly -buildvcs=false"
BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# The upstream commit a module version was tagged from, when the module proxy recorded it.
module_commit() {
  local info
  info="$(go env GOMODCACHE)/cache/download/$1/@v/$2.info"
  [[ -f "$info" ]] && sed -n 's/.*"Hash":"\([0-9a-f]*\)".*/\1/p' "$info" | head -1
}

kube_ldflags() {
  local minor pkg flags=""
  minor=$(echo "$KUBE_VERSION" | cut -d. -f2)
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$BUILD_DATE -X $pkg.gitCommit="
  done
  echo "$flags"
}

# name -> "package|ldflags"
recipe() {
  case "$1" in
    kube-apiserver | kube-controller-manager | kube-scheduler | kubectl | kubelet | kube-proxy)
      echo "k8s.io/kubernetes/cmd/$1|$(kube_ldflags)" ;;
    etcd)
      echo "go.etcd.io/etcd/server/v3|-X go.etcd.io/etcd/api/v3/version.GitSHA=$(module_commit go.etcd.io/etcd/server/v3 "$ETCD_VERSION")" ;;
    coredns)
      echo ".|-X github.com/coredns/coredns/coremain.GitCommit=$(module_commit github.com/coredns/coredns "$COREDNS_VERSION")" ;;
    kwok)
      echo "sigs.k8s.io/kwok/cmd/kwok|-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=$KUBE_VERSION" ;;
    kuberay)
      echo "github.com/ray-project/kuberay/ray-operator|-X main._buildTime_=$BUILD_DATE -X main._commitId_=$(module_commit github.com/ray-project/kuberay/ray-operator "$KUBERAY_VERSION")" ;;
    helm)
      local minor
      minor=$(echo "$KUBE_VERSION" | cut -d. -f2)
      echo "helm.sh/helm/v3/cmd/helm|-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor" ;;
  esac
}

build_one() {
  local name=$1 spec pkg ldflags logf start
  spec=$(recipe "$name")
  pkg=${spec%%|*}
  ldflags=${spec#*|}
  logf="$SET_DIR/logs/$name.log"
  start=$SECONDS
  log "building $name ($pkg) ..."
  # Build to a temporary name and rename, so an interrupted build never looks finished.
  if ! (cd "$MODULES/$name" && nice -n 19 go build -p "$JOBS" -trimpath -ldflags "-s -w $ldflags" \
      -o "$BIN_DIR/.$name.tmp" "$pkg") >"$logf" 2>&1; then
    tail -n 40 "$logf" >&2
    rm -f "$BIN_DIR/.$name.tmp"
    die "building $name failed (full log: $logf)"
  fi
  mv -f "$BIN_DIR/.$name.tmp" "$BIN_DIR/$name"
  log "built $name in $((SECONDS - start)) s"
}

# The source directory of module $2 as required by modules/$1 (downloaded if needed).
module_dir() {
  (cd "$MODULES/$1" && go mod download "$2" && go list -m -f '{{.Dir}}' "$2") ||
    die "cannot locate module $2 (required by modules/$1)"
}

copy_data() {
  local dir stage
  dir=$(module_dir kuberay github.com/ray-project/kuberay/ray-operator)
  mkdir -p "$CRD_DIR/kuberay"
  cp "$dir"/config/crd/bases/ray.io_*.yaml "$CRD_DIR/kuberay/"
  chmod u+w "$CRD_DIR"/kuberay/*.yaml
  log "copied KubeRay CRDs to $CRD_DIR/kuberay"
  dir=$(module_dir kwok sigs.k8s.io/kwok)
  mkdir -p "$KWOK_STAGE_DIR"
  for stage in "${KWOK_STAGES[@]}"; do
    cp "$dir/kustomize/stage/$stage.yaml" "$KWOK_STAGE_DIR/"
  done
  chmod u+w "$KWOK_STAGE_DIR"/*.yaml
  log "copied kwok stages to $KWOK_STAGE_DIR"
}

total_start=$SECONDS
log "version set $SET ($(go version | cut -d' ' -f3), -p $JOBS)"
for name in "${TARGETS[@]}"; do
  if [[ -x "$BIN_DIR/$name" ]]; then
    log "$name already built"
  else
    build_one "$name"
  fi
done
data_present || copy_data
log "done in $((SECONDS - total_start)) s: $BIN_DIR"
echo "$BIN_DIR"
