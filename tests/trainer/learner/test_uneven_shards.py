"""Mini-batches whose size divides neither data_parallel nor micro_batch_size (dynamic sampling in
`filter_only` mode keeps any number of groups): DP = 2 with shards of 4 and 3 rows, a ragged last
micro-batch, and a rank left with no row at all must give the single-rank loss, gradients and step."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.distributed as dist

from forkrl.trainer.learner.launch import run_world
from forkrl.trainer.learner.learner import Learner
from forkrl.trainer.objectives import parse_objective
from tests.trainer.learner.tiny import hf_token_stats, make_batch, save_tiny_model, with_old_logp
from tests.trainer.learner.workers import make_spec

RUN = {"distributed": False, "mbs": 2}


def one_step_per_batch(model_dir: str, batches: list) -> Any:
    """Per batch, on a fresh learner: token stats, loss, gathered gradients, params after one step."""
    out = []
    for batch in batches:
        learner = Learner(make_spec(RUN), parse_objective({"name": "dapo"}), model_dir)
        stats = learner.compute_logprobs(batch)
        loss = learner.forward_backward(batch).loss
        grads = dict(learner.export_grads())
        learner.optimizer_step()
        out.append({"logp": stats.logp, "entropy": stats.entropy, "loss": loss, "grads": grads,
                    "params": dict(learner.export_weights())})
        learner.close()
    return out if dist.get_rank() == 0 else None


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("uneven")
    model = save_tiny_model(root / "qwen2", "qwen2")
    batches = []
    for seed, rows in ((5, 7), (6, 1)):
        batch = make_batch(seed=seed, batch=rows)
        batches.append(with_old_logp(batch, hf_token_stats(model, batch)[0], seed=seed + 10))
    return {"batches": batches, "hf": [hf_token_stats(model, b) for b in batches],
            "single": run_world(one_step_per_batch, 1, str(root / "qwen2"), batches)[0],
            "dp2": run_world(one_step_per_batch, 2, str(root / "qwen2"), batches)[0]}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.parametrize("index", [0, 1], ids=["7_rows_over_dp2_mbs2", "1_row_over_dp2"])
def test_uneven_dp_shards_match_one_rank(runs: dict[str, Any], index: int) -> None:
    single, dp2 = runs["single"][index], runs["dp2"][index]
    hf_logp, hf_entropy = runs["hf"][index]
    # Every row's statistics come back in order, none lost or duplicated at the shard boundaries.
    assert dp2["logp"].shape == runs["batches"][index].input_ids.shape
    torch.testing.assert_close(dp2["logp"].double(), hf_logp, atol=1e-4, rtol=0)
    torch.testing.assert_close(dp2["entropy"].double(), hf_entropy, atol=1e-4, rtol=0)
    assert abs(single["loss"]) > 1e-4
    assert dp2["loss"] == pytest.approx(single["loss"], abs=1e-6)
    assert max(float(g.abs().max()) for g in single["grads"].values()) > 1e-3
    assert _max_diff(dp2["grads"], single["grads"]) < 1e-5
    assert _max_diff(dp2["params"], single["params"]) < 1e-5
