#!/usr/bin/env bash
# The GPU check, in one call on a machine with a CUDA GPU, its own Python 3.12 + torch + CUDA, and no network
# (the device machine lent to some sessions). What it runs:
#   1. the `gpu`-marked tests: the learner on CUDA (fp32 and bf16 against the HF model, TP=2 with two GPUs),
#      the fused loss head's peak memory against the logits path (bf16, Qwen vocabulary), packed rows'
#      FlexAttention at 16k tokens against float64 (no [s, s] tensor: peak memory bounded)
#      and, where vLLM is installed, the vLLM engine end to end (skipped otherwise: vLLM is too large to carry);
#   2. bench/learner.py --gpu-only: tokens/s, MFU and peak memory of a Qwen2.5-0.5B-shaped learner in bf16.
# It writes OUT/summary.json (device, versions, each test's outcome, the bench figures) and the logs beside it.
#
# Here, first:  python scripts/gpu_wheels.py        (.gpu-wheels/: every Python dependency but torch)
# There:        bash scripts/gpu-check.sh "$OUT"     (with .gpu-wheels carried along; ~5 min on one H100/H200)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-/tmp/forkrl-gpu-check}}"
PY="${PYTHON:-python3}"
WHEELS="${FORKRL_GPU_WHEELS:-.gpu-wheels}"
WORK="${TMPDIR:-/tmp}/forkrl-gpu-check"
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu-check: no CUDA device visible to $("$PY" -c 'import torch; print("torch", torch.__version__)' 2>&1)" >&2
  exit 2
fi
if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  echo "gpu-check: no wheels in $WHEELS (make them with: python scripts/gpu_wheels.py, and carry the folder)" >&2
  exit 2
fi

# The machine's torch stays (system site-packages); the carried wheels go into a venv over it.
"$PY" -m venv --system-site-packages "$WORK/venv" || exit 2
"$WORK/venv/bin/python" -m pip install --quiet --no-index --no-deps "$WHEELS"/*.whl > "$OUT/install.log" 2>&1 \
  || { echo "gpu-check: installing the carried wheels failed (see $OUT/install.log)" >&2; tail -20 "$OUT/install.log" >&2; exit 2; }
# The repository is the `forkrl` package (setup.py maps its folders under that name).
mkdir -p "$WORK/path" && ln -sfn "$PWD" "$WORK/path/forkrl"
export PYTHONPATH="$WORK/path:$PWD${PYTHONPATH:+:$PYTHONPATH}"
VPY="$WORK/venv/bin/python"

started=$(date +%s)
timeout 420 "$VPY" -m pytest -m gpu -p no:cacheprovider -q -rA --durations=0 --junitxml "$OUT/tests.xml" \
  tests/trainer/learner/test_gpu.py tests/trainer/learner/test_attention.py tests/trainer/test_fused_head.py \
  tests/rollout/test_vllm_adapter.py 2>&1 | tee "$OUT/tests.log"
tests_rc=${PIPESTATUS[0]}
timeout 240 "$VPY" bench/learner.py --gpu-only 2>&1 | tee "$OUT/bench-learner.log"
bench_rc=${PIPESTATUS[0]}

"$VPY" scripts/gpu_summary.py --out "$OUT" --tests-rc "$tests_rc" --bench-rc "$bench_rc" \
  --seconds "$(( $(date +%s) - started ))" | tee "$OUT/summary.json"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
