#!/usr/bin/env bash
# Runs lint and the whole test suite in the project environment (made by scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${FORKRL_VENV:-$HOME/.cache/forkrl/venv}"
"$VENV/bin/python" -m ruff check .
"$VENV/bin/python" -m pytest "$@"
