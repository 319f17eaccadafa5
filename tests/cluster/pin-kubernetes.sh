#!/usr/bin/env bash
# Pins the Kubernetes modules under tests/cluster/modules (the control plane: kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl; the nodes: kubelet, kube-proxy) to one
# k8s.io/kubernetes release, e.g.
#   bash tests/cluster/pin-kubernetes.sh v1.36.3            # all six
#   bash tests/cluster/pin-kubernetes.sh v1.36.3 kubelet    # only the named ones
#
# k8s.io/kubernetes requires its ~30 staging modules at v0.0.0 and replaces them with local
# paths; replace directives do not apply to dependents, so each module here replaces every
# staging module with its published v0.<minor>.<patch>. The list is read from the release's
# own go.mod, so it follows staging modules added or removed between releases.
set -euo pipefail

VERSION="${1:?usage: pin-kubernetes.sh vMAJOR.MINOR.PATCH [NAME...]}"
shift
NAMES=("$@")
[[ ${#NAMES[@]} -gt 0 ]] || NAMES=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
[[ "$VERSION" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || { echo "not a Kubernetes release: $VERSION" >&2; exit 1; }
STAGING_VERSION="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"
MODULES="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/modules"
export GOWORK=off GOFLAGS=-mod=mod

upstream_mod=$(go mod download -json "k8s.io/kubernetes@$VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[[ -f "$upstream_mod" ]] || { echo "cannot download k8s.io/kubernetes@$VERSION" >&2; exit 1; }
go_line=$(awk '$1 == "go" { print $2; exit }' "$upstream_mod")
staging=$(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" { print $1 }' "$upstream_mod" | sort -u)

for name in "${NAMES[@]}"; do
  mkdir -p "$MODULES/$name"
  {
    echo "// Builds $name from k8s.io/kubernetes $VERSION. The staging modules are required at v0.0.0 upstream"
    echo "// and replaced by local paths there, which do not apply to dependents: pin each to its release."
    echo "module forkrl.dev/tests/cluster/$name"
    echo
    echo "go $go_line"
    echo
    echo "tool k8s.io/kubernetes/cmd/$name"
    echo
    echo "require k8s.io/kubernetes $VERSION"
    echo
    echo "replace ("
    for module in $staging; do printf '\t%s => %s %s\n' "$module" "$module" "$STAGING_VERSION"; done
    echo ")"
  } >"$MODULES/$name/go.mod"
  rm -f "$MODULES/$name/go.sum"
  (cd "$MODULES/$name" && go mod tidy)
  echo "pinned modules/$name to k8s.io/kubernetes $VERSION" >&2
done
