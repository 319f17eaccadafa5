"""Vocab-parallel log-probs/entropy on 2 real gloo ranks vs the full-vocab autograd reference (E4).

All TP cases, in-place backward included, run in one spawned 2-rank world (spawning is the slow part).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from forkrl.trainer.entropy import logprobs_and_entropy_naive
from forkrl.trainer.vocab_parallel import vocab_parallel_logprobs_and_entropy
from tests.distributed_utils import run_on_ranks

TOKENS, VOCAB, TP, HIDDEN = 37, 1000, 2, 8
# (temperature, entropy_requires_grad, chunk_size, dtype, inplace_backward)
CONFIGS = [
    (1.0, False, None, torch.float64, False),
    (0.7, True, None, torch.float64, False),
    (1.3, True, 8, torch.float64, False),
    (1.0, False, 5, torch.float64, False),
    (0.9, True, 16, torch.float32, False),
    (1.0, True, 10, torch.bfloat16, False),
    (1.0, False, None, torch.float64, True),
    (1.3, True, 8, torch.float64, True),
    (0.9, True, 16, torch.float32, True),
    (1.0, True, 10, torch.bfloat16, True),
]
OUTPUT_LAYER_TEMPERATURE = 0.8


def _case() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(99)
    logits = torch.randn(TOKENS, VOCAB, generator=gen, dtype=torch.float64) * 3.0
    logits[3] *= 10.0
    targets = torch.randint(0, VOCAB, (TOKENS,), generator=gen)
    targets[:4] = torch.tensor([0, VOCAB // TP - 1, VOCAB // TP, VOCAB - 1])  # shard edges
    return {
        "logits": logits,
        "targets": targets,
        "grad_logp": torch.randn(TOKENS, generator=gen, dtype=torch.float64),
        "grad_entropy": torch.randn(TOKENS, generator=gen, dtype=torch.float64),
        "hidden": torch.randn(TOKENS, HIDDEN, generator=gen, dtype=torch.float64),
        "weight": torch.randn(VOCAB, HIDDEN, generator=gen, dtype=torch.float64),
    }


def _run_config(
    logits_shard: torch.Tensor,
    case: dict[str, torch.Tensor],
    config: tuple,
    group: dist.ProcessGroup | None,
) -> dict[str, torch.Tensor | bool]:
    temperature, entropy_grad, chunk_size, dtype, inplace = config
    leaf = logits_shard.detach().to(dtype, copy=True).requires_grad_(True)
    # In place, the logits must come from an op (a leaf would be refused); clone's backward ignores them.
    logits = leaf.clone() if inplace else leaf
    logp, entropy = vocab_parallel_logprobs_and_entropy(
        logits,
        case["targets"],
        group,
        temperature,
        entropy_requires_grad=entropy_grad,
        chunk_size=chunk_size,
        inplace_backward=inplace,
    )
    loss = (logp * case["grad_logp"].to(logp.dtype)).sum()
    if entropy_grad:
        loss = loss + (entropy * case["grad_entropy"].to(entropy.dtype)).sum()
    loss.backward()
    return {
        "logp": logp.detach(),
        "entropy": entropy.detach(),
        "grad": leaf.grad,
        "entropy_requires_grad": entropy.requires_grad,
        # In place the logits' storage must now hold exactly the gradient the leaf received.
        "logits_hold_grad": inplace and torch.equal(logits.detach(), leaf.grad),
    }


def _run_output_layer(rank: int, world_size: int, case: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Vocab-parallel output layer: logits_shard = hidden @ W_shard.T, backward in place into the shard."""
    shard = VOCAB // world_size
    hidden = case["hidden"].clone().requires_grad_(True)
    weight_shard = case["weight"][rank * shard : (rank + 1) * shard].clone().requires_grad_(True)
    logits_shard = hidden @ weight_shard.T
    logp, entropy = vocab_parallel_logprobs_and_entropy(
        logits_shard,
        case["targets"],
        dist.group.WORLD,
        OUTPUT_LAYER_TEMPERATURE,
        entropy_requires_grad=True,
        chunk_size=8,
        inplace_backward=True,
    )
    ((logp * case["grad_logp"]).sum() + (entropy * case["grad_entropy"]).sum()).backward()
    return {"logp": logp.detach(), "entropy": entropy.detach(), "hidden": hidden.grad, "weight": weight_shard.grad}


def _tp_worker(rank: int, world_size: int, case: dict[str, torch.Tensor]) -> dict:
    shard = VOCAB // world_size
    logits_shard = case["logits"][:, rank * shard : (rank + 1) * shard].contiguous()
    return {
        "configs": [_run_config(logits_shard, case, config, dist.group.WORLD) for config in CONFIGS],
        "output_layer": _run_output_layer(rank, world_size, case),
    }


@pytest.fixture(scope="module")
def tp_results() -> tuple[dict[str, torch.Tensor], list[dict]]:
    case = _case()
    return case, run_on_ranks(_tp_worker, TP, args=(case,))


def _reference(case: dict[str, torch.Tensor], config: tuple) -> dict[str, torch.Tensor]:
    """Plain autograd through torch.log_softmax on the full vocab (inputs rounded like the test's)."""
    temperature, entropy_grad, _, dtype, _ = config
    leaf = case["logits"].to(dtype).to(torch.float64, copy=True).requires_grad_(True)
    log_p = torch.log_softmax(leaf / temperature, dim=-1)
    logp = log_p.gather(1, case["targets"][:, None]).squeeze(1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    loss = (logp * case["grad_logp"]).sum()
    if entropy_grad:
        loss = loss + (entropy * case["grad_entropy"]).sum()
    loss.backward()
    return {"logp": logp.detach(), "entropy": entropy.detach(), "grad": leaf.grad}


@pytest.mark.parametrize("index", range(len(CONFIGS)))
def test_tp2_matches_full_vocab_reference(tp_results: tuple, index: int) -> None:
    case, per_rank = tp_results
    config = CONFIGS[index]
    ref = _reference(case, config)
    grad_tol = 1e-2 if config[3] == torch.bfloat16 else 1e-5
    shard = VOCAB // TP
    for rank, results in enumerate(per_rank):
        got = results["configs"][index]
        torch.testing.assert_close(got["logp"].double(), ref["logp"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got["entropy"].double(), ref["entropy"], atol=1e-5, rtol=1e-5)
        assert got["grad"].dtype == config[3]
        torch.testing.assert_close(
            got["grad"].double(), ref["grad"][:, rank * shard : (rank + 1) * shard], atol=grad_tol, rtol=grad_tol
        )
        assert got["entropy_requires_grad"] == config[1]
        assert got["logits_hold_grad"] == config[4]


@pytest.mark.parametrize("index", range(len(CONFIGS)))
def test_tp_ranks_agree_bitwise(tp_results: tuple, index: int) -> None:
    _, (rank0, rank1) = tp_results
    assert torch.equal(rank0["configs"][index]["logp"], rank1["configs"][index]["logp"])
    assert torch.equal(rank0["configs"][index]["entropy"], rank1["configs"][index]["entropy"])


def test_tp2_inplace_output_layer_matches_full_vocab_autograd(tp_results: tuple) -> None:
    """Each rank's W shard gets its rows of the full gradient; the hidden gradients sum to the full one
    (the all-reduce Megatron's copy-to-TP-region does in backward)."""
    case, per_rank = tp_results
    hidden = case["hidden"].clone().requires_grad_(True)
    weight = case["weight"].clone().requires_grad_(True)
    log_p = torch.log_softmax((hidden @ weight.T) / OUTPUT_LAYER_TEMPERATURE, dim=-1)
    logp = log_p.gather(1, case["targets"][:, None]).squeeze(1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    ((logp * case["grad_logp"]).sum() + (entropy * case["grad_entropy"]).sum()).backward()
    shard = VOCAB // TP
    for rank, results in enumerate(per_rank):
        got = results["output_layer"]
        torch.testing.assert_close(got["logp"], logp.detach(), atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(got["entropy"], entropy.detach(), atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(
            got["weight"], weight.grad[rank * shard : (rank + 1) * shard], atol=1e-10, rtol=1e-10
        )
    hidden_sum = sum(results["output_layer"]["hidden"] for results in per_rank)
    torch.testing.assert_close(hidden_sum, hidden.grad, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_no_group_is_the_naive_result(chunk_size: int | None) -> None:
    case = _case()
    config = (0.8, True, chunk_size, torch.float64, False)
    got = _run_config(case["logits"], case, config, None)
    ref = _reference(case, config)
    for name in ("logp", "entropy", "grad"):
        torch.testing.assert_close(got[name], ref[name], atol=1e-10, rtol=1e-10)
    naive_logp, naive_entropy = logprobs_and_entropy_naive(case["logits"], case["targets"], 0.8)
    torch.testing.assert_close(got["logp"], naive_logp)
    torch.testing.assert_close(got["entropy"], naive_entropy)


def test_targets_are_checked_against_the_global_vocab() -> None:
    with pytest.raises(ValueError, match="targets"):
        vocab_parallel_logprobs_and_entropy(torch.zeros(2, 5), torch.tensor([0, 5]), None)
