"""The learner's loss for every objective equals the objective library's single-process loss.

A 2-rank world (DP = 2, two micro-batches per rank) computes the mini-batch loss of each objective, and a
4-rank world (TP = 2, PP = 2, the same four micro-batches on one DP rank) that of the entropy-aware ones
(forking under both scopes, Archer with its reference model and KL); here the same loss is computed in one
process from the transformers model's log-probs/entropies:
per micro-batch with the library's global normaliser, and for the global forking scope also in one
call on the concatenated batch with a top-rho mask taken over all of its tokens.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from forkrl.trainer.learner.batch import LearnerBatch
from forkrl.trainer.learner.launch import run_world
from forkrl.trainer.objectives import LossInputs, compute_policy_loss, mini_batch_context, parse_objective
from forkrl.trainer.objectives.normalizers import needs_token_split, token_split_masks
from forkrl.trainer.selection import num_selected, topk_token_mask
from tests.trainer.learner import workers
from tests.trainer.learner.tiny import hf_token_stats, make_batch, save_tiny_model, with_old_logp

# world 2 -> DP = 2; 4 sequences per rank -> 2 micro-batches each. The configured maximum response length
# is above every response of the batch, so a learner dividing by the longest one would differ.
RUN = {"tp": 1, "pp": 1, "mbs": 2, "max_response": 30}
DP, MBS = 2, 2
OBJECTIVES = [
    {"name": "forking", "rho": 0.2, "scope": "micro_batch"},
    {"name": "forking", "rho": 0.2, "scope": "mini_batch_global"},
    {"name": "forking", "rho": 0.2, "scope": "mini_batch_global", "entropy_source": "old"},
    {"name": "forking", "rho": 0.8, "select": "bottom", "scope": "mini_batch_global", "tie_rule": "geq_tau"},
    {"name": "dapo", "token_mean_scope": "micro_batch"},
    {"name": "dapo"},
    {"name": "archer"},
    {"name": "gspo"},
    {"name": "cispo"},
    {"name": "kl_cov", "kl_cov_ratio": 0.1},
    {
        "name": "clip_cov",
        "clip_ratio": 0.2,
        "cov_lower": -5.0,
        "cov_upper": 5.0,
        "clip_eps_low": 0.2,
        "clip_eps_high": 0.28,
    },
    {"name": "forking", "rho": 0.2, "scope": "micro_batch", "tie_rule": "geq_tau"},
    # Per-type KL means over the whole mini-batch: the reasoning split is computed before the loss.
    {"name": "archer", "loss_agg": "token-mean", "beta_knowledge": 0.05, "beta_reasoning": 0.02},
    # seq-mean-token-sum-norm: L = the run's maximum response length, or the objective's constant.
    {"name": "dapo", "loss_agg": "seq-mean-token-sum-norm"},
    {"name": "gspo", "loss_agg": "seq-mean-token-sum-norm", "token_sum_norm_length": 50},
]

# TP = 2 x PP = 2: DP = 1, so the rank holds all 8 sequences, cut into the same 2-row micro-batches.
TP_PP_RUN = {**RUN, "tp": 2, "pp": 2}
TP_PP_OBJECTIVES = [OBJECTIVES[i] for i in (0, 1, 2, 3, 5, 6, 12)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("learner_objectives")
    model = save_tiny_model(root / "qwen3", "qwen3", seed=1)
    batch = make_batch(seed=11)
    logp, entropy = hf_token_stats(model, batch)
    batch = with_old_logp(batch, logp, seed=12, noise=0.2)
    batch = LearnerBatch(**{**batch.__dict__, "old_entropy": entropy.float()})
    result = run_world(workers.objectives_and_reference, 2, str(root / "qwen3"), batch, OBJECTIVES, RUN)[0]
    tp_pp = run_world(workers.objectives_and_reference, 4, str(root / "qwen3"), batch, TP_PP_OBJECTIVES,
                      TP_PP_RUN)[0]
    return {"batch": batch, "logp": logp, "entropy": entropy, **result, "tp_pp": tp_pp}


def _inputs(setup: dict[str, Any], rows: slice, selection: torch.Tensor | None = None) -> LossInputs:
    batch = setup["batch"]
    return LossInputs(
        logp=setup["logp"][rows],
        old_logp=batch.old_logp[rows].double(),
        advantages=batch.advantages[rows].double(),
        response_mask=batch.response_mask[rows].bool(),
        entropy=setup["entropy"][rows],
        ref_logp=setup["logp"][rows],  # the reference model is the initial policy
        selection_mask=selection,
    )


def _micro_batch_rows(batch: LearnerBatch) -> list[slice]:
    """The learner's split: DP rank r gets rows [r B/DP, (r+1) B/DP), cut into MBS-row micro-batches."""
    return [slice(start, start + MBS) for start in range(0, batch.num_sequences, MBS)]


def _single_process_loss(setup: dict[str, Any], objective: dict) -> float:
    cfg = parse_objective(objective)
    batch = setup["batch"]
    rows = _micro_batch_rows(batch)
    masks = [batch.response_mask[r].bool() for r in rows]
    selections = None
    if objective["name"] == "forking" and objective.get("scope") == "mini_batch_global":
        mask, _ = topk_token_mask(setup["entropy"], batch.response_mask.bool(), cfg.rho, cfg.select, cfg.tie_rule)
        selections = [mask[r] for r in rows]
    elif needs_token_split(cfg):
        selections = token_split_masks(cfg, [setup["entropy"][r] for r in rows], masks)
    assert int(batch.response_mask.sum(dim=1).max()) < RUN["max_response"]
    ctx = mini_batch_context(cfg, masks, selections, group=None, max_response_len=RUN["max_response"])
    total = 0.0
    for index, r in enumerate(rows):
        selection = None if selections is None else selections[index]
        total += float(compute_policy_loss(cfg, _inputs(setup, r, selection), ctx).loss)
    return total


@pytest.mark.parametrize("index", range(len(OBJECTIVES)), ids=[str(o) for o in OBJECTIVES])
def test_learner_loss_equals_single_process_library_loss(setup: dict[str, Any], index: int) -> None:
    objective = OBJECTIVES[index]
    got = setup["losses"][index]
    assert got["objective"] == objective
    assert got["loss"] == pytest.approx(_single_process_loss(setup, objective), abs=1e-5)
    assert got["loss"] != 0.0


@pytest.mark.parametrize("index", range(len(TP_PP_OBJECTIVES)), ids=[str(o) for o in TP_PP_OBJECTIVES])
def test_under_tensor_and_pipeline_parallelism_the_loss_and_split_are_the_same(setup: dict[str, Any],
                                                                            index: int) -> None:
    objective = TP_PP_OBJECTIVES[index]
    got = setup["tp_pp"]["losses"][index]
    assert got["objective"] == objective
    assert got["loss"] == pytest.approx(_single_process_loss(setup, objective), abs=1e-5)
    same_on_dp2 = setup["losses"][OBJECTIVES.index(objective)]["metrics"]
    assert got["metrics"].pg_tokens == same_on_dp2.pg_tokens  # the same tokens got gradient
    if same_on_dp2.forking is not None:
        assert got["metrics"].forking.threshold == pytest.approx(same_on_dp2.forking.threshold, abs=ENTROPY_TOL)
    if same_on_dp2.kl is not None and same_on_dp2.kl.low is not None:
        assert got["metrics"].kl.low == pytest.approx(same_on_dp2.kl.low, abs=1e-6)


def test_reference_model_under_tensor_and_pipeline_parallelism(setup: dict[str, Any]) -> None:
    ref = setup["tp_pp"]["reference"]
    torch.testing.assert_close(ref["before_ref"].double(), setup["logp"], atol=1e-4, rtol=0)
    assert torch.equal(ref["after_ref"], ref["before_ref"])
    mask = setup["batch"].response_mask.bool()
    assert float((ref["after_policy"] - ref["before_policy"])[mask].abs().max()) > 1e-4
    # The same step as on DP = 2: the updated policy agrees across layouts.
    torch.testing.assert_close(ref["after_policy"], setup["reference"]["after_policy"], atol=2e-5, rtol=0)


@pytest.mark.parametrize("index", [1, 2])
def test_global_forking_equals_one_call_on_the_concatenated_batch(setup: dict[str, Any], index: int) -> None:
    """Paper Eq. 6 over the whole mini-batch: one top-rho selection over all DP ranks' tokens."""
    batch = setup["batch"]
    per_micro_batch = {**OBJECTIVES[index], "scope": "micro_batch"}
    per_micro_batch.pop("entropy_source", None)
    whole = compute_policy_loss(parse_objective(per_micro_batch), _inputs(setup, slice(None)))
    assert setup["losses"][index]["loss"] == pytest.approx(float(whole.loss), abs=1e-5)
    tokens = int(batch.response_mask.sum())
    assert setup["losses"][index]["metrics"].pg_tokens == num_selected(tokens, 0.2)


def test_forking_scopes_differ(setup: dict[str, Any]) -> None:
    """Spec D1: the per-micro-batch and the global threshold select different tokens."""
    assert abs(setup["losses"][0]["loss"] - setup["losses"][1]["loss"]) > 1e-3


def test_reference_model_is_frozen_initial_policy(setup: dict[str, Any]) -> None:
    ref = setup["reference"]
    mask = setup["batch"].response_mask.bool()
    torch.testing.assert_close(ref["before_ref"].double(), setup["logp"], atol=1e-4, rtol=0)
    assert torch.equal(ref["before_ref"], ref["before_policy"])
    assert torch.equal(ref["after_ref"], ref["before_ref"])  # frozen through the optimizer step
    assert float((ref["after_policy"] - ref["before_policy"])[mask].abs().max()) > 1e-4  # the policy moved
    assert ref["metrics"].kl.all == pytest.approx(0.0, abs=1e-7)  # ref == policy before the step


# ------------------------------------------------------------------ the learner's metrics are exact
ENTROPY_TOL = 1e-4  # the learner's fp32 entropies vs the transformers model's


@pytest.mark.parametrize("index", range(len(OBJECTIVES)), ids=[str(o) for o in OBJECTIVES])
def test_entropy_percentiles_are_exact_over_the_whole_mini_batch(setup: dict[str, Any], index: int) -> None:
    """One global order statistic per percentile over both DP ranks' micro-batches, not a mean of
    per-micro-batch percentiles (which differs here by more than the tolerance)."""
    batch = setup["batch"]
    values = setup["entropy"][batch.response_mask.bool()]
    got = setup["losses"][index]["metrics"].entropy
    for p, value in got.quantiles().items():
        assert value == pytest.approx(float(torch.quantile(values, p / 100)), abs=ENTROPY_TOL)
    assert got.mean == pytest.approx(float(values.mean()), abs=ENTROPY_TOL)
    per_micro_batch = [torch.quantile(setup["entropy"][r][batch.response_mask[r].bool()], 0.9)
                       for r in _micro_batch_rows(batch)]
    assert abs(float(torch.stack(per_micro_batch).mean()) - got.p90) > 10 * ENTROPY_TOL


def test_forking_thresholds_are_the_ones_applied(setup: dict[str, Any]) -> None:
    batch = setup["batch"]
    mask = batch.response_mask.bool()
    # Global scope: one threshold, the k-th largest entropy of the whole mini-batch.
    _, tau = topk_token_mask(setup["entropy"], mask, 0.2)
    forking = setup["losses"][1]["metrics"].forking
    assert forking.threshold == pytest.approx(tau, abs=ENTROPY_TOL)
    assert forking.threshold_min == forking.threshold_max == forking.threshold
    # Per micro-batch: each micro-batch's own threshold; the record keeps their range and mean.
    taus = [topk_token_mask(setup["entropy"][r], mask[r], 0.2)[1] for r in _micro_batch_rows(batch)]
    forking = setup["losses"][0]["metrics"].forking
    assert forking.threshold_min == pytest.approx(min(taus), abs=ENTROPY_TOL)
    assert forking.threshold_max == pytest.approx(max(taus), abs=ENTROPY_TOL)
    assert forking.threshold == pytest.approx(sum(taus) / len(taus), abs=ENTROPY_TOL)
    assert forking.threshold_min < forking.threshold_max


def test_token_fractions_are_weighted_by_tokens_over_micro_batches_and_ranks(setup: dict[str, Any]) -> None:
    """DAPO's clip fraction and ratio extremes equal one library call on the whole batch."""
    index = OBJECTIVES.index({"name": "dapo"})
    whole = compute_policy_loss(parse_objective(OBJECTIVES[index]), _inputs(setup, slice(None))).metrics
    got = setup["losses"][index]["metrics"]
    tokens = int(setup["batch"].response_mask.sum())
    assert got.response_tokens == tokens
    assert got.clip_frac.all == pytest.approx(whole["clip_frac"], abs=1.5 / tokens)  # one token may flip
    assert got.clip_frac.all > 0
    assert got.ratio.max == pytest.approx(whole["ratio/max"], rel=1e-3)
    assert got.ratio.min == pytest.approx(whole["ratio/min"], rel=1e-3)
    assert got.ratio.mean == pytest.approx(whole["ratio/mean"], rel=1e-4)
