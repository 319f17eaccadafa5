"""Hugging Face parity and TP / PP / DP layout parity of the Megatron learner (CPU, gloo, real processes).

One 4-rank world runs every layout on the same imported Qwen2 weights and global batch, with SDPA and the
fused loss head and with megatron's unfused attention and logits; one 2-rank world gives the per-family
parity at TP = 1 (DP = 2) and TP = 2. Everything is compared with the transformers model and the objective library
run in this (single) test process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from forkrl.trainer.learner.launch import run_world
from forkrl.trainer.objectives import LossInputs, compute_policy_loss, parse_objective
from tests.trainer.learner import workers
from tests.trainer.learner.tiny import hf_token_stats, make_batch, save_tiny_model, with_old_logp

OBJECTIVE = {"name": "dapo"}
RUNS = [
    {"tp": 1, "pp": 1, "distributed": False},  # DP = 4
    # DP = 2; two rows per micro-batch: the fused head's TP gradient arrives transposed (see learner/head.py)
    {"tp": 2, "pp": 1, "distributed": False, "mbs": 2},
    {"tp": 1, "pp": 2, "distributed": False},  # DP = 2
    {"tp": 2, "pp": 2, "distributed": False, "export": True},  # DP = 1
    {"tp": 1, "pp": 1, "distributed": True},  # DP = 4, optimizer state sharded over 4
    {"tp": 2, "pp": 1, "sp": True, "recompute": "selective", "mbs": 2},  # DP = 2, padded rows split by SP
    {"tp": 2, "pp": 2, "vpp": 2, "sp": True, "recompute": "full", "mode": "packed", "max_tokens": 48},
    # Every run above uses SDPA and the fused loss head (the defaults); these use megatron's unfused attention
    # and build the logits, for the same results.
    {"tp": 2, "pp": 2, "distributed": False, "head": "logits", "attention": "unfused"},
    {"tp": 2, "pp": 1, "sp": True, "mode": "packed", "max_tokens": 48, "head": "logits", "attention": "unfused"},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("learner_layouts")
    models = {}
    dirs = {}
    for family, tie in (("qwen2", False), ("qwen3", False), ("llama", True)):
        dirs[family] = str(root / family)
        models[family] = save_tiny_model(root / family, family, tie=tie)
    batch = make_batch(seed=3)
    stats = {family: hf_token_stats(model, batch) for family, model in models.items()}
    batch = with_old_logp(batch, stats["qwen2"][0], seed=4)
    per_family = run_world(workers.token_stats_per_family, 2, dirs, batch, [1, 2])[0]
    reference_run = run_world(workers.layout_runs, 1, dirs["qwen2"], batch, OBJECTIVE, [{"distributed": True}])[0]
    layouts = run_world(workers.layout_runs, 4, dirs["qwen2"], batch, OBJECTIVE, RUNS)[0]
    return {"dirs": dirs, "batch": batch, "hf": stats, "per_family": per_family, "runs": reference_run + layouts}


def _exporting_run(setup: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in setup["runs"] if r["run"].get("export"))


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama"])
def test_hf_parity_logprobs_and_entropy(setup: dict[str, Any], family: str, tp: int) -> None:
    """Each family (Llama with tied embeddings, Qwen3 with QK-norm) against transformers, whole and split
    over two tensor-parallel ranks."""
    hf_logp, hf_entropy = setup["hf"][family]
    ours = setup["per_family"][family, tp]
    mask = setup["batch"].response_mask.bool()
    assert float(hf_entropy[mask].std()) > 0.1  # entropies vary: the comparison is not against a constant
    torch.testing.assert_close(ours["logp"].double(), hf_logp, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours["entropy"].double(), hf_entropy, atol=1e-4, rtol=0)


def test_every_layout_matches_hf_token_stats(setup: dict[str, Any]) -> None:
    hf_logp, hf_entropy = setup["hf"]["qwen2"]
    for result in setup["runs"]:
        torch.testing.assert_close(result["logp"].double(), hf_logp, atol=1e-4, rtol=0, msg=str(result["run"]))
        torch.testing.assert_close(result["entropy"].double(), hf_entropy, atol=1e-4, rtol=0, msg=str(result["run"]))


def test_loss_equal_across_layouts_and_to_single_process_objective(setup: dict[str, Any]) -> None:
    batch = setup["batch"]
    hf_logp, hf_entropy = setup["hf"]["qwen2"]
    inputs = LossInputs(
        logp=hf_logp,
        old_logp=batch.old_logp.double(),
        advantages=batch.advantages.double(),
        response_mask=batch.response_mask.bool(),
        entropy=hf_entropy,
    )
    expected = float(compute_policy_loss(parse_objective(OBJECTIVE), inputs).loss)
    losses = [r["loss"] for r in setup["runs"]]
    assert losses == pytest.approx([expected] * len(losses), abs=1e-5)


def test_gathered_gradients_equal_across_layouts(setup: dict[str, Any]) -> None:
    with_grads = [r for r in setup["runs"] if "grads" in r]
    assert len(with_grads) >= 5  # DP=1 reference + the four TP/PP layouts
    reference = with_grads[0]["grads"]
    assert max(float(g.abs().max()) for g in reference.values()) > 1e-3
    for result in with_grads[1:]:
        assert _max_diff(result["grads"], reference) < 1e-4, result["run"]


def test_parameters_equal_after_one_step(setup: dict[str, Any]) -> None:
    reference = setup["runs"][0]["params"]
    initial = _exporting_run(setup)["initial"]
    assert _max_diff(reference, initial) > 1e-3  # the step moved the weights
    for result in setup["runs"][1:]:
        assert _max_diff(result["params"], reference) < 1e-5, result["run"]
        assert result["grad_norm"] == pytest.approx(setup["runs"][0]["grad_norm"], rel=1e-5)


def test_export_round_trip_is_exact(setup: dict[str, Any]) -> None:
    on_disk = load_file(str(Path(setup["dirs"]["qwen2"]) / "model.safetensors"))
    exported = _exporting_run(setup)["initial"]  # exported under TP = 2, PP = 2
    assert set(exported) == set(on_disk)
    for name, tensor in on_disk.items():
        assert torch.equal(exported[name], tensor), name


def test_export_per_stage_covers_each_tensor_once(setup: dict[str, Any]) -> None:
    on_disk = load_file(str(Path(setup["dirs"]["qwen2"]) / "model.safetensors"))
    per_rank = _exporting_run(setup)["initial_per_stage"]
    assert sum(1 for local in per_rank if local) == 2  # TP-rank 0 of each of the two stages
    names = [name for local in per_rank for name in local]
    assert sorted(names) == sorted(on_disk)
    for local in per_rank:
        for name, tensor in local.items():
            assert torch.equal(tensor, on_disk[name]), name
