"""Spec section 8.4 cases P1-P4, aggregation and C1-C10, float64, values and gradients."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from forkrl.trainer.objectives import (
    ArcherConfig,
    CispoConfig,
    ClipCovConfig,
    DapoConfig,
    ForkingConfig,
    GspoConfig,
    KlCovConfig,
    LossContext,
    LossInputs,
    compute_policy_loss,
    parse_objective,
)
from forkrl.trainer.objectives.aggregation import aggregate
from forkrl.trainer.objectives.archer import response_entropy_quantile
from forkrl.trainer.objectives.covariance import token_covariance
from forkrl.trainer.objectives.surrogate import clipped_surrogate
from tests.trainer.canonical import ADVANTAGES, LOGP, MASK, canonical_inputs, flat, padded

TOL = 1e-6


def grad_of(cfg, **overrides) -> tuple[float, list[float], dict]:
    inputs = canonical_inputs(**overrides)
    out = compute_policy_loss(cfg, inputs)
    out.loss.backward()
    return float(out.loss), flat(inputs.logp.grad), out.metrics


def one_token(ratio: float, advantage: float, c: float | None) -> tuple[float, float]:
    """Objective and d objective / d logp for a single token with the given ratio."""
    logp = torch.tensor(float(torch.log(torch.tensor(ratio, dtype=torch.float64))), dtype=torch.float64,
                        requires_grad=True)
    obj, _, _ = clipped_surrogate(torch.exp(logp), torch.tensor(advantage, dtype=torch.float64), 0.2, 0.28, c)
    obj.backward()
    return float(obj.detach()), float(logp.grad)


@pytest.mark.parametrize(
    ("ratio", "adv", "c", "objective", "grad"),
    [
        (1.5, 1.0, 10.0, 1.28, 0.0),  # P1: clipped above
        (0.5, 1.0, 10.0, 0.5, 0.5),  # P2: below the clip, A > 0 keeps gradient r A
        (0.5, -1.0, 10.0, -0.8, 0.0),  # P3: clipped below for A < 0
        (5.0, -1.0, 3.0, -3.0, 0.0),  # P4: dual-clip c=3 bounds the objective
        (5.0, -1.0, 10.0, -5.0, -5.0),  # P4: c=10 is not reached
        (5.0, -1.0, None, -5.0, -5.0),  # P4: no dual-clip
    ],
)
def test_surrogate_and_dual_clip(ratio: float, adv: float, c: float | None, objective: float, grad: float) -> None:
    value, derivative = one_token(ratio, adv, c)
    assert value == pytest.approx(objective, abs=TOL)
    assert derivative == pytest.approx(grad, abs=TOL)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("token-mean", 2.5), ("seq-mean-token-mean", 3.0), ("seq-mean-token-sum", 5.0),
     ("seq-mean-token-sum-norm", 5.0 / 3.0)],
)
def test_aggregation_modes(mode: str, expected: float) -> None:
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    assert float(aggregate(losses, mask, mode)) == pytest.approx(expected, abs=TOL)


def test_aggregation_empty_mask_is_zero_not_nan() -> None:
    losses = torch.ones(2, 3, dtype=torch.float64, requires_grad=True)
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
        value = aggregate(losses, torch.zeros(2, 3, dtype=torch.bool), mode)
        assert float(value.detach()) == 0.0


# Spec C1's per-token objective: response 0 has 4 tokens, response 1 has 2.
C1_SEQUENCE_SUMS = [1.832104 + 1.92 + 1.657756 + 1.111227, -0.674929 - 0.409365]


@pytest.mark.parametrize(
    ("constant", "ctx_length", "divisor"),
    [
        (10, None, 10),  # the config's constant ...
        (10, 7, 10),  # ... wins over the run's maximum response length
        (None, 7, 7),  # the run's maximum response length (verl: the padded response length)
        (None, None, 4),  # no context: this batch's padded width
    ],
)
def test_token_sum_norm_divides_by_a_fixed_length(constant: int | None, ctx_length: int | None, divisor: int) -> None:
    """Issue 10: seq-mean-token-sum-norm = -mean_i sum_t P_t / L with L fixed for the run, not per batch."""
    cfg = DapoConfig(loss_agg="seq-mean-token-sum-norm", token_sum_norm_length=constant)
    loss = float(compute_policy_loss(cfg, canonical_inputs(), LossContext(max_response_len=ctx_length)).loss)
    assert loss == pytest.approx(-sum(C1_SEQUENCE_SUMS) / len(C1_SEQUENCE_SUMS) / divisor, abs=TOL)


def test_c1_dapo() -> None:
    loss, grad, metrics = grad_of(DapoConfig())
    assert loss == pytest.approx(-0.9061322, abs=TOL)
    assert grad == pytest.approx([-0.305351, 0, -0.276293, -0.185205, 0.112488, 0.068228], abs=TOL)
    # Only token 1 (r = 1.49 > 1.28, A > 0) is clipped.
    assert metrics["clip_frac"] == pytest.approx(1 / 6)


def test_c2_forking_rho_one_equals_dapo() -> None:
    dapo_loss, dapo_grad, _ = grad_of(DapoConfig())
    loss, grad, metrics = grad_of(ForkingConfig(rho=1.0))
    assert loss == pytest.approx(dapo_loss, abs=1e-12)
    assert grad == pytest.approx(dapo_grad, abs=1e-12)
    assert metrics["forking/selected_frac"] == 1.0


def test_c3_forking_half() -> None:
    inputs = canonical_inputs()
    out = compute_policy_loss(ForkingConfig(rho=0.5), inputs)
    out.loss.backward()
    assert flat(out.token_mask.double()) == [0, 1, 0, 1, 1, 0]
    assert float(out.loss) == pytest.approx(-0.7854326, abs=TOL)
    assert flat(inputs.logp.grad) == pytest.approx([0, 0, 0, -0.370409, 0.224976, 0], abs=TOL)
    assert out.metrics["forking/threshold"] == pytest.approx(0.90)


def test_c4_forking_top_and_bottom() -> None:
    top = compute_policy_loss(ForkingConfig(rho=0.2), canonical_inputs())
    assert flat(top.token_mask.double()) == [0, 1, 0, 0, 1, 0]
    assert float(top.loss) == pytest.approx(-0.6225353, abs=TOL)
    bottom = compute_policy_loss(ForkingConfig(rho=0.8, select="bottom"), canonical_inputs())
    assert flat(bottom.token_mask.double()) == [1, 0, 1, 1, 1, 1]
    assert float(bottom.loss) == pytest.approx(-0.7033586, abs=TOL)


def test_c4_forking_empty_batch_gives_zero_without_nan() -> None:
    empty = torch.zeros_like(MASK)
    inputs = canonical_inputs(response_mask=empty)
    out = compute_policy_loss(ForkingConfig(), inputs)
    out.loss.backward()
    assert float(out.loss) == 0.0
    assert torch.all(inputs.logp.grad == 0)


def test_forking_entropy_never_receives_gradient() -> None:
    entropy = padded([0.30, 1.80, 0.02, 0.90, 1.20, 0.05]).requires_grad_(True)
    out = compute_policy_loss(ForkingConfig(rho=0.5), canonical_inputs(entropy=entropy))
    out.loss.backward()
    assert entropy.grad is None


def test_c5_archer_split_values_and_gradients() -> None:
    inputs = canonical_inputs()
    tau = response_entropy_quantile(inputs.entropy, MASK, 0.8)
    assert tau.tolist() == pytest.approx([1.26, 0.97], abs=TOL)
    pg_only = ArcherConfig(loss_agg="token-mean", beta_knowledge=0.0)
    loss, grad, metrics = grad_of(pg_only)
    assert loss == pytest.approx(-0.9537377, abs=TOL)
    assert grad == pytest.approx([0, -0.372956, -0.276293, -0.185205, 0.112488, 0.068228], abs=TOL)
    assert metrics["archer/reasoning_frac"] == pytest.approx(2 / 6)

    per_type = ArcherConfig(loss_agg="token-mean", kl_norm="per_type")
    loss_kl, grad_kl, metrics = grad_of(per_type)
    assert loss_kl == pytest.approx(-0.9536939, abs=TOL)
    kl_grad = [a - b for a, b in zip(grad_kl, grad, strict=True)]
    # The spec quotes three significant digits.
    assert kl_grad == pytest.approx([2.38e-5, 0, 0, -1.62e-4, 0, -5.54e-5], rel=5e-3, abs=1e-12)
    assert metrics["kl/low"] == pytest.approx(0.0437404, abs=TOL)
    assert metrics["kl/high"] == pytest.approx(0.1095658, abs=TOL)

    paper = ArcherConfig(loss_agg="token-mean", kl_norm="paper")
    assert grad_of(paper)[0] == pytest.approx(-0.9537085, abs=TOL)


def test_c6_archer_invariants() -> None:
    symmetric = ArcherConfig(loss_agg="token-mean", eps_knowledge_low=0.2, eps_knowledge_high=0.2,
                             eps_reasoning_low=0.2, eps_reasoning_high=0.2, beta_knowledge=0.0)
    vanilla = DapoConfig(clip_eps_low=0.2, clip_eps_high=0.2)
    sym_loss, sym_grad, _ = grad_of(symmetric)
    van_loss, van_grad, _ = grad_of(vanilla)
    assert sym_loss == pytest.approx(van_loss, abs=1e-12)
    assert sym_grad == pytest.approx(van_grad, abs=1e-12)

    beta = 0.01
    uniform = ArcherConfig(loss_agg="token-mean", kl_norm="paper", beta_knowledge=beta, beta_reasoning=beta)
    no_kl = ArcherConfig(loss_agg="token-mean", beta_knowledge=0.0)
    # GRPO with a uniform k3 penalty: the mean of beta * k3 over the 6 tokens, computed independently here.
    logp, ref = torch.tensor(LOGP, dtype=torch.float64), canonical_inputs().ref_logp[MASK]
    d = ref - logp
    k3_mean = float((torch.exp(d) - d - 1).mean())
    assert grad_of(uniform)[0] == pytest.approx(grad_of(no_kl)[0] + beta * k3_mean, abs=1e-12)


@pytest.mark.parametrize(
    ("values", "reasoning"),
    [([0.1, 0.2, 0.3, 0.4, 1.0], [0, 0, 0, 0, 1]), ([0.5, 0.5, 0.5], [0, 0, 0]), ([0.7], [0])],
)
def test_c6_archer_quantile_edge_cases(values: list[float], reasoning: list[int]) -> None:
    from forkrl.trainer.objectives.archer import reasoning_token_mask

    entropy = torch.tensor([values], dtype=torch.float64)
    mask = torch.ones_like(entropy, dtype=torch.bool)
    if len(values) == 5:
        assert float(response_entropy_quantile(entropy, mask, 0.8)) == pytest.approx(0.52)
    assert reasoning_token_mask(entropy, mask, 0.8, "gt").int().tolist() == [reasoning]
    if len(values) == 3:  # paper rule: an all-equal response is all reasoning under >=
        assert reasoning_token_mask(entropy, mask, 0.8, "geq").all()


def test_c7_kl_cov() -> None:
    inputs = canonical_inputs()
    cov = token_covariance(inputs.logp, inputs.advantages, MASK)
    assert flat(cov) == pytest.approx([0.294444, -0.572222, 0.427778, -0.505556, -0.055556, -0.655556], abs=TOL)
    loss, grad, metrics = grad_of(KlCovConfig(kl_cov_ratio=0.2, kl_coef=1.0))
    assert loss == pytest.approx(-0.9424217, abs=TOL)
    assert metrics["cov/selected_frac"] == pytest.approx(1 / 6)
    # Unclipped -A r everywhere (gradient -A r / 6) plus |log r| on token 2 (log r = 0.1 > 0: + 1/6).
    ratio = torch.exp(torch.tensor(LOGP) - torch.tensor([-0.5, -2.0, -0.2, -1.2, -1.0, -0.05])).double()
    expected = (-torch.tensor(ADVANTAGES, dtype=torch.float64) * ratio / 6).tolist()
    expected[2] += 1 / 6
    assert grad == pytest.approx(expected, abs=TOL)


def test_c8_clip_cov() -> None:
    cfg = ClipCovConfig(clip_eps_low=0.2, clip_eps_high=0.28, cov_lower=0.3, cov_upper=5.0, clip_ratio=0.2)
    loss, grad, metrics = grad_of(cfg)
    assert loss == pytest.approx(-0.6298394, abs=TOL)
    assert grad[2] == 0.0 and grad[1] == 0.0  # token 2 zeroed, token 1 clipped
    assert metrics["cov/zeroed_frac"] == pytest.approx(1 / 6)


def test_c9_gspo() -> None:
    loss, grad, _ = grad_of(GspoConfig())
    assert loss == pytest.approx(-0.4874822, abs=TOL)
    # Response 0 is clipped (s = 1.105 > 1.0004, A > 0); response 1 is not: d/dlogp_t = -A s / |o_1| / 2.
    assert grad[:4] == pytest.approx([0, 0, 0, 0], abs=TOL)
    assert grad[4:] == pytest.approx([0.5 * 1.051271 / 2 / 2] * 2, abs=TOL)


def test_c10_cispo() -> None:
    loss, grad, metrics = grad_of(CispoConfig())
    assert loss == pytest.approx(0.7883792, abs=TOL)
    assert grad == pytest.approx([-0.3, -0.3, -0.276293, -0.185205, 0.1, 0.068228], abs=TOL)
    assert metrics["clip_frac"] == pytest.approx(3 / 6)


def test_tis_weights_cap_the_behaviour_ratio() -> None:
    rollout = padded([-0.5, -2.5, -0.2, -1.2, -1.0, -0.05])  # token 1: pi_old / pi_rollout = e^0.5 = 1.6487
    base, base_grad, _ = grad_of(DapoConfig(), rollout_logp=rollout)
    capped, capped_grad, metrics = grad_of(DapoConfig(tis_cap=1.5), rollout_logp=rollout)
    # Only token 1 has weight != 1, and it is clipped (no gradient) with objective 1.92: loss shifts by
    # -(1.5 - 1) * 1.92 / 6.
    assert capped == pytest.approx(base - 0.5 * 1.92 / 6, abs=1e-9)
    assert capped_grad == pytest.approx(base_grad, abs=1e-12)
    assert metrics["tis/capped_frac"] == pytest.approx(1 / 6)
    # k1 = mean(log pi_rollout - log pi_old) = -0.5 / 6 (one sample can make k1 negative); k3 >= 0.
    assert metrics["mismatch/kl_k1"] == pytest.approx(-0.5 / 6, abs=1e-12)
    assert metrics["mismatch/kl_k3"] == pytest.approx((math.exp(0.5) - 0.5 - 1) / 6, abs=1e-12)
    with pytest.raises(ValueError, match="rollout_logp"):
        compute_policy_loss(DapoConfig(tis_cap=2.0), canonical_inputs())


def test_entropy_advantage_transform_in_loss() -> None:
    from forkrl.trainer.objectives import EntropyAdvantageConfig

    cfg = CispoConfig(entropy_advantage=EntropyAdvantageConfig())
    shaped = padded([1.62, 2.22, 1.508, 1.86, -0.25, -0.48])
    reference = compute_policy_loss(CispoConfig(), canonical_inputs(advantages=shaped))
    assert float(compute_policy_loss(cfg, canonical_inputs()).loss) == pytest.approx(float(reference.loss), abs=1e-12)


def test_metrics_report_entropy_percentiles_and_types() -> None:
    out = compute_policy_loss(ForkingConfig(rho=0.5), canonical_inputs())
    ent = torch.tensor([0.30, 1.80, 0.02, 0.90, 1.20, 0.05], dtype=torch.float64)
    assert out.metrics["entropy/p50"] == pytest.approx(float(torch.quantile(ent, 0.5)))
    assert out.metrics["entropy/p99"] == pytest.approx(float(torch.quantile(ent, 0.99)))
    # Selected (high) tokens 1, 3, 4: token 1 is clipped -> 1/3; low tokens 0, 2, 5: none clipped.
    assert out.metrics["clip_frac/high"] == pytest.approx(1 / 3)
    assert out.metrics["clip_frac/low"] == 0.0
    assert out.metrics["ratio/max"] == pytest.approx(1.491825, abs=TOL)


def test_context_normalizers_scale_the_loss() -> None:
    cfg = DapoConfig()
    local = float(compute_policy_loss(cfg, canonical_inputs()).loss)
    ctx = LossContext(token_normalizer=12.0)
    assert float(compute_policy_loss(cfg, canonical_inputs(), ctx).loss) == pytest.approx(local / 2, abs=1e-12)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": "forking", "rho": 1.5}, "rho"),
        ({"name": "forking", "rho": 0}, "rho"),
        ({"name": "archer", "eps_knowledge_low": -0.1}, "eps_knowledge_low"),
        ({"name": "dapo", "dual_clip_c": 0.5}, "dual_clip_c"),
        ({"name": "dapo", "clip_eps_hi": 0.3}, "clip_eps_hi"),
        ({"name": "clip_cov", "cov_lower": 5.0, "cov_upper": 1.0}, "cov_lower"),
        ({"name": "nope"}, "name"),
        ({"name": "dapo", "token_sum_norm_length": 0}, "token_sum_norm_length"),
    ],
)
def test_bad_configs_name_the_field(payload: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        parse_objective(payload)


def test_missing_inputs_give_clear_errors() -> None:
    with pytest.raises(ValueError, match="entropy"):
        compute_policy_loss(ForkingConfig(), canonical_inputs(entropy=None))
    with pytest.raises(ValueError, match="selection_mask"):
        compute_policy_loss(ForkingConfig(scope="mini_batch_global"), canonical_inputs())
    with pytest.raises(ValueError, match="old_logp"):
        LossInputs(logp=padded(LOGP), old_logp=torch.zeros(3), advantages=padded(ADVANTAGES), response_mask=MASK)
