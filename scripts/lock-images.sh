#!/usr/bin/env bash
# Writes docker/constraints.txt from the project's tested virtual environment (scripts/setup.sh), so the
# images install exactly the versions the test suite ran with.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${FORKRL_VENV:-$HOME/.cache/forkrl/venv}"
{
  echo "# Exact versions of every package the images install: the environment the test suite passed in."
  echo "# Regenerate with scripts/lock-images.sh after changing dependencies (pyproject.toml)."
  "$VENV/bin/pip" freeze --exclude-editable | grep -v -E '^(-e |forkrl)'
} > docker/constraints.txt
echo "wrote docker/constraints.txt ($(grep -c '==' docker/constraints.txt) pins)"
