#!/usr/bin/env bash
# Creates (once) and refreshes the project's virtual environment.
# The environment lives outside the checkout (FORKRL_VENV, default ~/.cache/forkrl/venv) so the
# multi-GB torch install and pip's cache survive fresh clones; re-running is cheap when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
VENV="${FORKRL_VENV:-$HOME/.cache/forkrl/venv}"
PY="${FORKRL_PYTHON:-python3.11}"
# Extras to install: dev (tests) and gpu (vLLM) always; `make bench-learning` adds bench (TRL).
EXTRAS="${FORKRL_EXTRAS:-dev,gpu}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment at $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi

# Reinstall only when the dependency files or the checkout path (editable install) changed.
STAMP="$VENV/.forkrl-stamp"
WANT="$(cat pyproject.toml setup.py scripts/setup.sh | sha256sum | cut -c1-16) $ROOT [$EXTRAS]"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  # The `gpu` extra (vLLM) installs on CPU machines too, so its adapter is tested against the real classes.
  echo "[setup] installing forkrl (editable) with the extras $EXTRAS; the first run downloads torch and vLLM"
  set +e
  "$VENV/bin/pip" install --progress-bar off -e ".[$EXTRAS]" 2>&1 | grep -v -E "^(Requirement already satisfied|  Using cached)"
  rc=${PIPESTATUS[0]}
  set -e
  [ "$rc" -eq 0 ] || { echo "[setup] pip install failed (exit $rc)" >&2; exit "$rc"; }
  "$VENV/bin/python" -c "import forkrl.trainer, forkrl.rollout, forkrl.operator" \
    || { echo "[setup] import check failed" >&2; exit 1; }
  echo "$WANT" > "$STAMP"
fi

# System tools some tests run, from Debian's packages. Outside the stamp on purpose: this runs every time
# and costs one `command -v` per tool once it is there.
# apt_tool COMMAND PACKAGE WHY TESTS: install PACKAGE when COMMAND is missing (as root, with apt-get).
apt_tool() {
  local command="$1" package="$2" why="$3" tests="$4"
  command -v "$command" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian's $package ($why)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" \
      >/dev/null || echo "[setup] WARNING: apt-get could not install $package; $tests fail until it is installed" >&2
  else
    echo "[setup] WARNING: $command is missing and cannot be installed here (needs root and apt-get);" \
         "$tests will skip" >&2
  fi
}
apt_tool /usr/bin/chromium chromium "headless browser for the HTML report checks" "tests/test_browser.py and the report checks"
apt_tool promtool prometheus "promtool, for the alert rule tests" "tests/monitoring/test_alerts.py"

# --- Real Kubernetes nodes (tests/cluster/image.py and the node tests): debootstrap builds the pod images,
# containerd + runc run them, the CNI plugins, iptables and conntrack give pods their network. ---
NODE_TESTS="tests/cluster/test_image.py and the real-node cluster tests"
apt_tool debootstrap debootstrap "builds the base pod image" "$NODE_TESTS"
apt_tool containerd containerd "the container runtime of the test nodes" "$NODE_TESTS"
apt_tool runc runc "the OCI runtime containerd starts containers with" "$NODE_TESTS"
apt_tool /usr/lib/cni/bridge containernetworking-plugins "CNI plugins (bridge, host-local, loopback) for pod networks" "$NODE_TESTS"
apt_tool iptables iptables "kube-proxy and the CNI bridge's NAT rules" "$NODE_TESTS"
apt_tool conntrack conntrack "kube-proxy flushes conntrack entries of removed Services" "$NODE_TESTS"
# --- end of the real-node block ---
echo "[setup] environment ready: $VENV"
