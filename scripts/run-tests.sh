#!/usr/bin/env bash
# Runs lint and the whole test suite in the project environment (made by scripts/setup.sh).
# Two xdist lanes (tests/conftest.py): the tests that own the machine run one after another in one, every
# other module fills the second around them. FORKRL_TEST_WORKERS=0 runs everything in this one process.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${FORKRL_VENV:-$HOME/.cache/forkrl/venv}"
WORKERS="${FORKRL_TEST_WORKERS:-2}"
"$VENV/bin/python" -m ruff check .
if [ "$WORKERS" -gt 0 ]; then
  exec "$VENV/bin/python" -m pytest -n "$WORKERS" --dist loadscope "$@"
fi
exec "$VENV/bin/python" -m pytest "$@"
