"""The learner on CUDA (NCCL): single-GPU fp32 and bf16 paths, and TP=2 when two GPUs are visible.

Run on a GPU machine with:
    ~/.cache/forkrl/venv/bin/python -m pytest tests/trainer/learner/test_gpu.py -q
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from forkrl.trainer.learner.launch import run_world
from tests.trainer.learner import workers
from tests.trainer.learner.tiny import hf_token_stats, make_batch, save_tiny_model, with_old_logp

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("learner_gpu")
    hf = save_tiny_model(root / "qwen2", "qwen2", seed=5)
    batch = make_batch(seed=21)
    logp, entropy = hf_token_stats(hf, batch)
    return {"dir": str(root / "qwen2"), "batch": with_old_logp(batch, logp, seed=22), "logp": logp, "entropy": entropy}


def _run(model: dict[str, Any], dtype: str, tp: int) -> dict[str, Any]:
    return run_world(workers.gpu_checks, tp, model["dir"], model["batch"], dtype, tp, backend="nccl")[0]


def check_against_hf(model: dict[str, Any], result: dict[str, Any], atol: float) -> None:
    mask = model["batch"].response_mask.bool()
    logp_err = (result["logp"].double() - model["logp"])[mask].abs()
    entropy_err = (result["entropy"].double() - model["entropy"])[mask].abs()
    assert float(logp_err.max()) < atol and float(entropy_err.max()) < atol
    assert torch.isfinite(torch.tensor(result["metrics"].loss))
    assert result["metrics"].grad_norm > 0
    moved = max(float((result["after"][k] - result["before"][k]).abs().max()) for k in result["before"])
    assert moved > 0


def test_single_gpu_fp32_matches_hf(model: dict[str, Any]) -> None:
    result = _run(model, "float32", 1)
    check_against_hf(model, result, atol=1e-3)  # TF32 matmuls may be enabled on the device
    on_disk = load_file(str(Path(model["dir"]) / "model.safetensors"))
    for name, tensor in on_disk.items():
        assert torch.equal(result["before"][name], tensor), name


def test_single_gpu_bf16_close_to_hf(model: dict[str, Any]) -> None:
    result = _run(model, "bfloat16", 1)
    check_against_hf(model, result, atol=0.25)  # bf16 weights and activations vs the fp32/fp64 reference


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpu_tensor_parallel_bf16(model: dict[str, Any]) -> None:
    check_against_hf(model, _run(model, "bfloat16", 2), atol=0.25)
