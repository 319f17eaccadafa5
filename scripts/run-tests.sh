#!/usr/bin/env bash
# Runs lint and the whole test suite in the project environment (made by scripts/setup.sh).
# Two xdist lanes (tests/conftest.py): the tests that own the machine run one after another in one, every
# other module fills the second around them. FORKRL_TEST_WORKERS=0 runs everything in this one process.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${FORKRL_VENV:-$HOME/.cache/forkrl/venv}"
WORKERS="${FORKRL_TEST_WORKERS:-2}"
# Two lanes of multi-process tests oversubscribe the cores: OpenMP threads that spin while they wait
# (libgomp's default) would burn the time slices the other lane's processes need. Numerics are unchanged.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
# Bytecode caches (gitignored __pycache__ in the checkout): without them each xdist worker re-parses and rewrites
# every test module's assertions (~5 CPU-s of its collection) and each process re-compiles forkrl's own modules.
unset PYTHONDONTWRITEBYTECODE
"$VENV/bin/python" -m ruff check .
if [ "$WORKERS" -gt 0 ]; then
  exec "$VENV/bin/python" -m pytest -n "$WORKERS" --dist loadscope "$@"
fi
exec "$VENV/bin/python" -m pytest "$@"
