"""Spec 8.4 D3: token-mean and seq-mean over micro-batches and 2 real gloo ranks with unequal token counts
equal the single-process loss and gradient on the concatenated batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist

from forkrl.trainer.global_selection import global_forking_masks
from forkrl.trainer.objectives import (
    ArcherConfig,
    DapoConfig,
    ForkingConfig,
    LossInputs,
    compute_policy_loss,
    mini_batch_context,
    parse_objective,
)
from forkrl.trainer.objectives.normalizers import needs_token_split, token_split_masks
from forkrl.trainer.selection import topk_token_mask
from tests.distributed_utils import run_on_ranks

RESP_LEN = 7
ARCHER_TOKEN_MEAN_PER_TYPE = {"name": "archer", "loss_agg": "token-mean", "kl_norm": "per_type",
                              "beta_knowledge": 0.05, "beta_reasoning": 0.02}
# (rank, micro-batch) -> response lengths: unequal token counts per rank and per micro-batch.
LAYOUT = {0: [[7, 3], [5]], 1: [[2, 6, 4], [1, 7], [3]]}
CONFIGS = [
    {"name": "dapo"},
    {"name": "archer", "loss_agg": "seq-mean-token-mean"},
    {"name": "archer", "loss_agg": "token-mean", "kl_norm": "paper", "beta_knowledge": 0.01},
    {"name": "gspo"},
    {"name": "cispo", "loss_agg": "seq-mean-token-sum-norm"},
    {"name": "forking", "rho": 0.3, "scope": "mini_batch_global"},
    # Issue 9: the per-type KL means of Archer under token-mean need global per-type token counts.
    ARCHER_TOKEN_MEAN_PER_TYPE,
]


def micro_batch(lengths: list[int], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    batch = len(lengths)
    mask = torch.arange(RESP_LEN).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    old = -torch.rand(batch, RESP_LEN, generator=gen, dtype=torch.float64) * 2
    return {
        "logp": old + 0.3 * torch.randn(batch, RESP_LEN, generator=gen, dtype=torch.float64),
        "old_logp": old,
        "ref_logp": old + 0.2 * torch.randn(batch, RESP_LEN, generator=gen, dtype=torch.float64),
        "advantages": torch.randn(batch, 1, generator=gen, dtype=torch.float64).expand(batch, RESP_LEN).clone(),
        # Quantised entropies create ties across ranks, which the global selection must break by rank order.
        "entropy": torch.round(torch.rand(batch, RESP_LEN, generator=gen, dtype=torch.float64) * 8) / 4,
        "response_mask": mask,
    }


def all_micro_batches() -> list[list[dict[str, torch.Tensor]]]:
    return [[micro_batch(lengths, seed=10 * rank + i) for i, lengths in enumerate(LAYOUT[rank])] for rank in LAYOUT]


def losses_and_grads(cfg, micro_batches, group=None) -> tuple[float, list[torch.Tensor]]:
    masks = [mb["response_mask"] for mb in micro_batches]
    selections = None
    if getattr(cfg, "scope", None) == "mini_batch_global":
        entropies = [mb["entropy"].float() for mb in micro_batches]
        if group is None and len(micro_batches) == 1:  # the single-process reference: plain local top-k
            selections = [topk_token_mask(entropies[0], masks[0], cfg.rho)[0]]
        else:
            selections, _, _ = global_forking_masks(entropies, masks, cfg.rho, group=group)
    elif needs_token_split(cfg):
        selections = token_split_masks(cfg, [mb["entropy"] for mb in micro_batches], masks, group=group)
    ctx = mini_batch_context(cfg, masks, selections, group=group, max_response_len=RESP_LEN)
    total, grads = 0.0, []
    for i, mb in enumerate(micro_batches):
        logp = mb["logp"].clone().requires_grad_(True)
        fields = {**mb, "logp": logp, "selection_mask": selections[i] if selections else None}
        out = compute_policy_loss(cfg, LossInputs(**fields), ctx)
        out.loss.backward()
        total += float(out.loss.detach())
        grads.append(logp.grad)
    return total, grads


def _rank_fn(rank: int, world_size: int) -> list[tuple[float, list[torch.Tensor]]]:
    mbs = all_micro_batches()[rank]
    return [losses_and_grads(parse_objective(c), mbs, group=dist.group.WORLD) for c in CONFIGS]


def concatenated() -> dict[str, torch.Tensor]:
    flat = [mb for rank_mbs in all_micro_batches() for mb in rank_mbs]
    return {key: torch.cat([mb[key] for mb in flat]) for key in flat[0]}


@pytest.fixture(scope="module")
def distributed_results() -> list[list[tuple[float, list[torch.Tensor]]]]:
    return run_on_ranks(_rank_fn, world_size=2)


@pytest.mark.parametrize("index", range(len(CONFIGS)))
def test_d3_two_ranks_equal_single_process(distributed_results, index: int) -> None:
    cfg = parse_objective(CONFIGS[index])
    reference_loss, (reference_grad,) = losses_and_grads(cfg, [concatenated()])
    loss = sum(distributed_results[rank][index][0] for rank in range(2))
    grads = torch.cat([g for rank in range(2) for g in distributed_results[rank][index][1]])
    assert loss == pytest.approx(reference_loss, abs=1e-12)
    torch.testing.assert_close(grads, reference_grad, atol=1e-12, rtol=0)
    assert reference_grad.abs().sum() > 0


def test_micro_batch_split_in_one_process_equals_whole() -> None:
    mbs = all_micro_batches()[1]
    whole = {key: torch.cat([mb[key] for mb in mbs]) for key in mbs[0]}
    for cfg in (DapoConfig(), ArcherConfig(), ForkingConfig(rho=1.0), parse_objective(ARCHER_TOKEN_MEAN_PER_TYPE)):
        split_loss, split_grads = losses_and_grads(cfg, mbs)
        whole_loss, (whole_grad,) = losses_and_grads(cfg, [whole])
        assert split_loss == pytest.approx(whole_loss, abs=1e-12)
        torch.testing.assert_close(torch.cat(split_grads), whole_grad, atol=1e-12, rtol=0)


def test_micro_batch_scope_is_the_mean_of_micro_batch_means() -> None:
    mbs = all_micro_batches()[0]
    cfg = DapoConfig(token_mean_scope="micro_batch")
    split_loss, _ = losses_and_grads(cfg, mbs)
    means = [float(compute_policy_loss(DapoConfig(), LossInputs(**mb)).loss) for mb in mbs]
    assert split_loss == pytest.approx(sum(means) / len(means), abs=1e-12)
    # ... which differs from the exact global token-mean when micro-batches have unequal token counts.
    assert abs(split_loss - losses_and_grads(DapoConfig(), mbs)[0]) > 1e-4


def test_forking_micro_batch_scope_normaliser_counts_k_per_micro_batch() -> None:
    mbs = all_micro_batches()[1]
    cfg = ForkingConfig(rho=0.3)
    ctx = mini_batch_context(cfg, [mb["response_mask"] for mb in mbs])
    # Micro-batches of 12, 8 and 3 tokens keep 4, 3 and 1 tokens.
    assert ctx.token_normalizer == 8.0


# ---------------------------------------------------------------------------------------------------
# Issue 8: the forking normaliser counts the tokens the loss actually uses, not k.


def _reference_forking_loss(mbs: list[dict[str, torch.Tensor]], selected: list[torch.Tensor]) -> float:
    """-mean of the dual-clipped surrogate (eps 0.2/0.28, c = 10) over the selected tokens, in float64 Python."""
    objectives = []
    for mb, sel in zip(mbs, selected, strict=True):
        for b, t in sel.nonzero().tolist():
            ratio = math.exp(float(mb["logp"][b, t]) - float(mb["old_logp"][b, t]))
            adv = float(mb["advantages"][b, t])
            value = min(ratio * adv, min(max(ratio, 0.8), 1.28) * adv)
            objectives.append(max(value, 10.0 * adv) if adv < 0 else value)
    return -sum(objectives) / len(objectives)


def _tied_micro_batches() -> list[dict[str, torch.Tensor]]:
    """Two micro-batches whose entropies tie at the top-rho threshold (4 equal values, k = 2 under rho = 0.5)."""
    mbs = [micro_batch([4], seed=81), micro_batch([3, 3], seed=82)]
    mbs[0]["entropy"] = torch.full_like(mbs[0]["entropy"], 0.7)
    mbs[1]["entropy"] = torch.tensor([[0.7, 0.7, 0.1] + [0.0] * (RESP_LEN - 3),
                                      [0.7, 0.3, 0.7] + [0.0] * (RESP_LEN - 3)], dtype=torch.float64)
    return mbs


def test_forking_geq_tau_micro_batch_normaliser_is_refused_without_the_selection() -> None:
    """Under geq_tau the number of selected tokens depends on the entropies (ties at tau all count), so a
    normaliser computed from the response masks alone (k per micro-batch) would be wrong: it must not be
    guessed."""
    cfg = ForkingConfig(rho=0.5, tie_rule="geq_tau")
    mbs = _tied_micro_batches()
    with pytest.raises(ValueError, match="selection_masks"):
        mini_batch_context(cfg, [mb["response_mask"] for mb in mbs])


def test_forking_geq_tau_micro_batch_loss_is_the_mean_over_the_selected_tokens() -> None:
    cfg = ForkingConfig(rho=0.5, tie_rule="geq_tau")
    mbs = _tied_micro_batches()
    masks = [mb["response_mask"] for mb in mbs]
    selections = token_split_masks(cfg, [mb["entropy"] for mb in mbs], masks)
    # All 4 tied tokens of the first micro-batch are kept although k = 2 (and 4 of 6 in the second, k = 3).
    assert [int(s.sum()) for s in selections] == [4, 4]
    ctx = mini_batch_context(cfg, masks, selections)
    assert ctx.token_normalizer == 8.0
    loss = 0.0
    for mb, selection in zip(mbs, selections, strict=True):
        loss += float(compute_policy_loss(cfg, LossInputs(**mb, selection_mask=selection), ctx).loss)
    assert loss == pytest.approx(_reference_forking_loss(mbs, selections), abs=1e-12)


@pytest.mark.parametrize("tie_rule", ["exact_k", "geq_tau"])
@pytest.mark.parametrize("select", ["top", "bottom"])
def test_forking_micro_batch_normaliser_equals_the_count_of_the_real_masks(tie_rule: str, select: str) -> None:
    """Every path of the normaliser counts what the loss's own per-micro-batch selection keeps."""
    cfg = ForkingConfig(rho=0.3, select=select, tie_rule=tie_rule)
    mbs = all_micro_batches()[1]  # quantised entropies: ties at the threshold
    masks = [mb["response_mask"] for mb in mbs]
    real = [compute_policy_loss(cfg, LossInputs(**mb)).token_mask for mb in mbs]
    expected = float(sum(int(r.sum()) for r in real))
    selections = token_split_masks(cfg, [mb["entropy"] for mb in mbs], masks)
    assert mini_batch_context(cfg, masks, selections).token_normalizer == expected
    if tie_rule == "exact_k":  # known without the entropies: exactly k per micro-batch
        assert mini_batch_context(cfg, masks).token_normalizer == expected


# ---------------------------------------------------------------------------------------------------
# Issue 9: Archer token-mean with per-type KL, exact over micro-batches.


def _reference_archer_kl(mbs: list[dict[str, torch.Tensor]], beta_knowledge: float, beta_reasoning: float) -> float:
    """beta_k mean_{knowledge} k3 + beta_r mean_{reasoning} k3 over all tokens of all micro-batches, with the
    per-response split H > linear 0.8-quantile of the response's entropies (numpy, float64)."""
    sums = {True: 0.0, False: 0.0}
    counts = {True: 0, False: 0}
    for mb in mbs:
        for row in range(mb["response_mask"].shape[0]):
            valid = mb["response_mask"][row].numpy()
            if not valid.any():
                continue
            entropy = mb["entropy"][row].numpy()[valid]
            tau = np.quantile(entropy, 0.8, method="linear")
            d = (mb["ref_logp"][row] - mb["logp"][row]).numpy()[valid]
            for h, dt in zip(entropy, d, strict=True):
                sums[bool(h > tau)] += math.exp(dt) - dt - 1.0
                counts[bool(h > tau)] += 1
    return beta_knowledge * sums[False] / counts[False] + beta_reasoning * sums[True] / counts[True]


def test_archer_token_mean_per_type_kl_matches_the_whole_mini_batch_type_means() -> None:
    cfg = parse_objective(ARCHER_TOKEN_MEAN_PER_TYPE)
    no_kl = parse_objective({**ARCHER_TOKEN_MEAN_PER_TYPE, "beta_knowledge": 0.0, "beta_reasoning": 0.0})
    mbs = all_micro_batches()[1]
    kl_term = losses_and_grads(cfg, mbs)[0] - losses_and_grads(no_kl, mbs)[0]
    assert kl_term == pytest.approx(_reference_archer_kl(mbs, 0.05, 0.02), abs=1e-12)


def test_archer_token_mean_per_type_needs_the_token_split() -> None:
    cfg = parse_objective(ARCHER_TOKEN_MEAN_PER_TYPE)
    with pytest.raises(ValueError, match="selection_masks"):
        mini_batch_context(cfg, [mb["response_mask"] for mb in all_micro_batches()[0]])
