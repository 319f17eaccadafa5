"""Property tests (hypothesis): rho = 1 is DAPO for any input; an empty mask gives loss 0 and no NaN;
exactly k tokens carry gradient under exact_k."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from forkrl.trainer.objectives import ArcherConfig, DapoConfig, ForkingConfig, LossInputs, compute_policy_loss
from forkrl.trainer.selection import num_selected


@st.composite
def loss_batches(draw: st.DrawFn, allow_empty: bool = True) -> dict[str, torch.Tensor]:
    batch = draw(st.integers(1, 4))
    length = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(draw(st.lists(st.integers(0 if allow_empty else 1, length), min_size=batch,
                                         max_size=batch)))
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    old = -torch.rand(batch, length, generator=gen, dtype=torch.float64) * 3
    # Entropies from a small set of values: plenty of ties.
    entropy = torch.randint(0, 4, (batch, length), generator=gen).double() / 2
    return {
        "logp": old + torch.randn(batch, length, generator=gen, dtype=torch.float64) * 0.5,
        "old_logp": old,
        "advantages": torch.randn(batch, 1, generator=gen, dtype=torch.float64).expand(batch, length).clone(),
        "entropy": entropy,
        "response_mask": mask,
    }


def run(cfg, fields: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logp = fields["logp"].clone().requires_grad_(True)
    out = compute_policy_loss(cfg, LossInputs(**{**fields, "logp": logp}))
    out.loss.backward()
    return out.loss.detach(), logp.grad, out.token_mask


@settings(max_examples=60)
@given(loss_batches(), st.sampled_from(["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]))
def test_rho_one_equals_dapo(fields: dict[str, torch.Tensor], agg: str) -> None:
    dapo_loss, dapo_grad, _ = run(DapoConfig(loss_agg=agg), fields)
    fork_loss, fork_grad, _ = run(ForkingConfig(rho=1.0, loss_agg=agg), fields)
    torch.testing.assert_close(fork_loss, dapo_loss, atol=1e-12, rtol=0)
    torch.testing.assert_close(fork_grad, dapo_grad, atol=1e-12, rtol=0)


@settings(max_examples=40)
@given(loss_batches(), st.sampled_from([DapoConfig(), ForkingConfig(), ArcherConfig(beta_knowledge=0.0)]))
def test_empty_mask_gives_zero_loss_without_nan(fields: dict[str, torch.Tensor], cfg) -> None:
    fields = {**fields, "response_mask": torch.zeros_like(fields["response_mask"])}
    loss, grad, _ = run(cfg, fields)
    assert float(loss) == 0.0
    assert torch.isfinite(grad).all() and torch.all(grad == 0)


@settings(max_examples=60)
@given(loss_batches(), st.floats(0.01, 1.0), st.sampled_from(["top", "bottom"]))
def test_exactly_k_tokens_selected(fields: dict[str, torch.Tensor], rho: float, select: str) -> None:
    _, _, token_mask = run(ForkingConfig(rho=rho, select=select), fields)
    n = int(fields["response_mask"].sum())
    assert int(token_mask.sum()) == num_selected(n, rho)
    assert not (token_mask & ~fields["response_mask"]).any()
