#!/usr/bin/env bash
# Creates (once) and refreshes the project's virtual environment.
# The environment lives outside the checkout (FORKRL_VENV, default ~/.cache/forkrl/venv) so the
# multi-GB torch install and pip's cache survive fresh clones; re-running is cheap when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
VENV="${FORKRL_VENV:-$HOME/.cache/forkrl/venv}"
PY="${FORKRL_PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment at $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi

# Reinstall only when the dependency files or the checkout path (editable install) changed.
STAMP="$VENV/.forkrl-stamp"
WANT="$(cat pyproject.toml setup.py scripts/setup.sh | sha256sum | cut -c1-16) $ROOT"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  # The `gpu` extra (vLLM) installs on CPU machines too, so its adapter is tested against the real classes.
  echo "[setup] installing forkrl (editable) with the dev and gpu extras; the first run downloads torch and vLLM"
  set +e
  "$VENV/bin/pip" install --progress-bar off -e ".[dev,gpu]" 2>&1 | grep -v -E "^(Requirement already satisfied|  Using cached)"
  rc=${PIPESTATUS[0]}
  set -e
  [ "$rc" -eq 0 ] || { echo "[setup] pip install failed (exit $rc)" >&2; exit "$rc"; }
  "$VENV/bin/python" -c "import forkrl.trainer, forkrl.rollout, forkrl.operator" \
    || { echo "[setup] import check failed" >&2; exit 1; }
  echo "$WANT" > "$STAMP"
fi

# Headless Chromium for tests/browser.py (the report.html check). Outside the stamp on purpose: it runs
# every time and costs one `[ -x ]` test when the browser is already there.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian's chromium (headless browser for the HTML report checks)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
      >/dev/null || echo "[setup] WARNING: apt-get could not install chromium; tests/test_browser.py fails until it is installed" >&2
  else
    echo "[setup] WARNING: /usr/bin/chromium is missing and cannot be installed here (needs root and apt-get);" \
         "the browser tests will skip" >&2
  fi
fi
# Debian's prometheus package brings promtool, which checks and unit-tests the chart's alert rules
# (tests/monitoring/test_alerts.py). Outside the stamp, like chromium: one `command -v` when present.
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian's prometheus (promtool, for the alert rule tests)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
      >/dev/null || echo "[setup] WARNING: apt-get could not install prometheus; tests/monitoring/test_alerts.py fails until promtool is installed" >&2
  else
    echo "[setup] WARNING: promtool is missing and cannot be installed here (needs root and apt-get);" \
         "the alert rule tests will skip" >&2
  fi
fi
echo "[setup] environment ready: $VENV"
