"""The fused loss head against plain autograd through full logits: values and both gradients, on one rank
and on 2 real gloo tensor-parallel ranks, and no [tokens, vocab] tensor ever allocated."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

from forkrl.trainer.fused_head import fused_head_logprobs_and_entropy
from tests.distributed_utils import run_on_ranks

TOKENS, VOCAB, HIDDEN, TP = 29, 300, 16, 2


def _case(dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    hidden = torch.randn(TOKENS, HIDDEN, generator=gen, dtype=torch.float64)
    hidden[2] *= 8.0  # a peaked row
    targets = torch.randint(0, VOCAB, (TOKENS,), generator=gen)
    targets[:4] = torch.tensor([0, VOCAB // TP - 1, VOCAB // TP, VOCAB - 1])  # shard edges
    return {"hidden": hidden.to(dtype), "weight": (torch.randn(VOCAB, HIDDEN, generator=gen, dtype=torch.float64)
                                                   * 0.5).to(dtype),
            "targets": targets, "grad_logp": torch.randn(TOKENS, generator=gen, dtype=torch.float64),
            "grad_entropy": torch.randn(TOKENS, generator=gen, dtype=torch.float64)}


def _reference(case: dict[str, torch.Tensor], temperature: float, entropy_grad: bool) -> dict[str, torch.Tensor]:
    """Full [tokens, vocab] logits in fp64 through torch.log_softmax and autograd."""
    hidden = case["hidden"].detach().double().clone().requires_grad_(True)
    weight = case["weight"].detach().double().clone().requires_grad_(True)
    log_p = torch.log_softmax(hidden @ weight.T / temperature, dim=-1)
    logp = log_p.gather(1, case["targets"][:, None]).squeeze(1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    loss = (logp * case["grad_logp"]).sum() + ((entropy * case["grad_entropy"]).sum() if entropy_grad else 0)
    loss.backward()
    return {"logp": logp.detach(), "entropy": entropy.detach(), "hidden": hidden.grad, "weight": weight.grad}


def _fused(case: dict[str, torch.Tensor], weight: torch.Tensor, group: dist.ProcessGroup | None,
           temperature: float, entropy_grad: bool, chunk: int) -> dict[str, torch.Tensor]:
    hidden = case["hidden"].detach().clone().requires_grad_(True)
    weight = weight.detach().clone().requires_grad_(True)
    logp, entropy = fused_head_logprobs_and_entropy(hidden, weight, case["targets"], group, temperature, chunk,
                                                    entropy_requires_grad=entropy_grad)
    assert entropy.requires_grad == entropy_grad
    loss = (logp * case["grad_logp"].to(logp.dtype)).sum()
    if entropy_grad:
        loss = loss + (entropy * case["grad_entropy"].to(entropy.dtype)).sum()
    loss.backward()
    return {"logp": logp.detach(), "entropy": entropy.detach(), "hidden": hidden.grad, "weight": weight.grad}


CASES = [(1.0, False, 29), (0.7, True, 5), (1.3, True, 1), (1.0, False, 8)]


@pytest.mark.parametrize(("temperature", "entropy_grad", "chunk"), CASES)
def test_one_rank_matches_full_logits_autograd(temperature: float, entropy_grad: bool, chunk: int) -> None:
    case = _case()
    ref = _reference(case, temperature, entropy_grad)
    got = _fused(case, case["weight"], None, temperature, entropy_grad, chunk)
    for key in ("logp", "entropy", "hidden", "weight"):
        torch.testing.assert_close(got[key], ref[key], atol=1e-10, rtol=1e-9, msg=key)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_is_close_to_fp64(dtype: torch.dtype) -> None:
    case = _case(dtype)
    ref = _reference(case, 0.9, True)
    got = _fused(case, case["weight"], None, 0.9, True, 6)
    tol = {torch.float32: 1e-4, torch.bfloat16: 6e-2}[dtype]
    assert got["logp"].dtype == torch.float32 and got["weight"].dtype == dtype
    for key in ("logp", "entropy", "hidden", "weight"):
        torch.testing.assert_close(got[key].double(), ref[key], atol=tol, rtol=tol, msg=key)


def _tp_worker(rank: int, world_size: int, case: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    shard = VOCAB // world_size
    weight = case["weight"][rank * shard:(rank + 1) * shard]
    return [_fused(case, weight, dist.group.WORLD, t, e, c) for t, e, c in CASES]


def test_tensor_parallel_ranks_match_full_logits_autograd() -> None:
    case = _case()
    per_rank = run_on_ranks(_tp_worker, TP, args=(case,))
    shard = VOCAB // TP
    for index, (temperature, entropy_grad, _) in enumerate(CASES):
        ref = _reference(case, temperature, entropy_grad)
        for rank, results in enumerate(per_rank):
            got = results[index]
            torch.testing.assert_close(got["logp"], ref["logp"], atol=1e-10, rtol=1e-9)
            torch.testing.assert_close(got["entropy"], ref["entropy"], atol=1e-10, rtol=1e-9)
            torch.testing.assert_close(got["weight"], ref["weight"][rank * shard:(rank + 1) * shard],
                                       atol=1e-10, rtol=1e-9)
        # Each rank's hidden gradient is its vocab shard's part: their sum is the full gradient.
        torch.testing.assert_close(sum(r[index]["hidden"] for r in per_rank), ref["hidden"], atol=1e-10, rtol=1e-9)
        assert torch.equal(per_rank[0][index]["logp"], per_rank[1][index]["logp"])


class LargestAllocation(TorchDispatchMode):
    """Records the largest tensor any op returns (every intermediate of forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


def test_no_tensor_as_large_as_the_logits_is_ever_made() -> None:
    tokens, vocab, hidden_size, chunk = 256, 512, 8, 16
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, hidden_size, generator=gen).requires_grad_(True)
    weight = torch.randn(vocab, hidden_size, generator=gen).requires_grad_(True)
    targets = torch.randint(0, vocab, (tokens,), generator=gen)
    with LargestAllocation() as fused:
        logp, entropy = fused_head_logprobs_and_entropy(hidden, weight, targets, None, 1.0, chunk, True)
        (logp.sum() + entropy.sum()).backward()
    assert fused.largest <= max(chunk * vocab, vocab * hidden_size), fused.largest
    with LargestAllocation() as plain:  # the same check sees the full logits of the plain path
        log_p = torch.log_softmax(hidden @ weight.T, dim=-1)
        (log_p.gather(1, targets[:, None]).sum() - (log_p.exp() * log_p).sum()).backward()
    assert plain.largest >= tokens * vocab


def test_bad_inputs_are_named() -> None:
    case = _case(torch.float32)
    with pytest.raises(ValueError, match="targets must be vocab ids"):
        fused_head_logprobs_and_entropy(case["hidden"], case["weight"], case["targets"] + VOCAB)
    with pytest.raises(ValueError, match="share a floating dtype"):
        fused_head_logprobs_and_entropy(case["hidden"], case["weight"].double(), case["targets"])
    with pytest.raises(ValueError, match=r"hidden must be \[tokens, h\]"):
        fused_head_logprobs_and_entropy(case["hidden"][:, :3], case["weight"], case["targets"])
    empty = fused_head_logprobs_and_entropy(case["hidden"][:0], case["weight"], case["targets"][:0])
    assert empty[0].shape == (0,)


def _cuda_peak_bytes(run) -> tuple[int, tuple[torch.Tensor, ...]]:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base, result


@pytest.mark.gpu
def test_on_cuda_the_fused_head_peaks_at_a_fraction_of_the_logits_path() -> None:
    """bf16, a Qwen-sized vocabulary: forward + backward of both heads, peak memory above the inputs."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from forkrl.trainer.vocab_parallel import vocab_parallel_logprobs_and_entropy

    tokens, vocab, hidden_size, chunk = 8192, 151_936, 1024, 1024
    gen = torch.Generator(device="cuda").manual_seed(0)
    hidden = (torch.randn(tokens, hidden_size, device="cuda", generator=gen) * 0.5).bfloat16().requires_grad_(True)
    weight = (torch.randn(vocab, hidden_size, device="cuda", generator=gen) * 0.05).bfloat16().requires_grad_(True)
    targets = torch.randint(0, vocab, (tokens,), device="cuda", generator=gen)

    def fused() -> tuple[torch.Tensor, ...]:
        logp, entropy = fused_head_logprobs_and_entropy(hidden, weight, targets, None, 1.0, chunk, True)
        (logp.sum() + entropy.sum()).backward()
        return logp.detach(), entropy.detach(), hidden.grad.clone(), weight.grad.clone()

    def through_logits() -> tuple[torch.Tensor, ...]:
        logp, entropy = vocab_parallel_logprobs_and_entropy(hidden @ weight.T, targets, None, 1.0, True)
        (logp.sum() + entropy.sum()).backward()
        return logp.detach(), entropy.detach(), hidden.grad.clone(), weight.grad.clone()

    fused_peak, got = _cuda_peak_bytes(fused)
    hidden.grad = weight.grad = None
    logits_peak, ref = _cuda_peak_bytes(through_logits)
    print(f"peak above inputs: fused head {fused_peak / 2**30:.2f} GiB, logits path {logits_peak / 2**30:.2f} GiB")
    assert logits_peak >= tokens * vocab * 2  # the bf16 logits alone
    assert fused_peak < 0.35 * logits_peak
    torch.testing.assert_close(got[0], ref[0], atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(got[1], ref[1], atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(got[2].float(), ref[2].float(), atol=5e-2, rtol=5e-2)
