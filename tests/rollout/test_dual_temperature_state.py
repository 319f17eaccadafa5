"""DualTemperatureState (no vLLM): per-sample rows driven in shuffled batches, discarded positions
(async-scheduling overshoot, prefill chunks, preemption), against sample-by-sample references."""

from __future__ import annotations

import pytest
import torch

from forkrl.rollout.dual_temperature import DualTemperatureRows, dual_temperature_step
from forkrl.rollout.dual_temperature_state import (
    IDENTITY_ROW,
    RING,
    DualTemperatureState,
    drain_high_temperature_counts,
)
from forkrl.rollout.types import DualTemperatureParams

VOCAB = 12
PARAMS = [
    DualTemperatureParams(t_high=1.5, t_low=0.6, threshold_mode="running_quantile", threshold=1.2, quantile_lr=0.2),
    DualTemperatureParams(t_high=1.3, t_low=0.8, threshold=1.9),
    DualTemperatureParams(t_high=2.0, t_low=0.5, threshold_mode="running_quantile", threshold=2.3, rho=0.4),
]


def _logit_sequence(seed: int, length: int) -> torch.Tensor:
    """[length, VOCAB] logits whose entropies straddle the thresholds above."""
    generator = torch.Generator().manual_seed(seed)
    scale = 0.3 + 3.0 * torch.rand((length, 1), generator=generator)
    return torch.randn((length, VOCAB), generator=generator) * scale


def _reference(params: DualTemperatureParams, logits: torch.Tensor) -> tuple[list[torch.Tensor], list[bool]]:
    """One sample alone, token by token: (tempered logits, high flags) from `dual_temperature_step`."""
    rows = DualTemperatureRows.from_params([params])
    tempered, highs = [], []
    for step in logits:
        out, high, rows.tau = dual_temperature_step(step.unsqueeze(0), rows)
        tempered.append(out[0])
        highs.append(bool(high[0]))
    return tempered, highs


def _step(state: DualTemperatureState, entries: list[tuple[int, int, torch.Tensor, bool]]) -> torch.Tensor:
    """entries: (row, output index, logits [VOCAB], kept) in batch order."""
    return state.step(
        torch.stack([e[2] for e in entries]),
        rows=torch.tensor([e[0] for e in entries]),
        out_index=torch.tensor([e[1] for e in entries]),
        kept=torch.tensor([e[3] for e in entries]),
    )


def test_shuffled_batches_match_each_sample_decoded_alone() -> None:
    lengths = [9, 14, 5]
    sequences = [_logit_sequence(seed, n) for seed, n in enumerate(lengths)]
    expected = [_reference(p, s) for p, s in zip(PARAMS, sequences, strict=True)]
    state = DualTemperatureState("cpu", initial_rows=2)  # forces the pool to grow while samples are held
    rows = []
    for i, params in enumerate(PARAMS):
        row, new = state.admit(f"s{i}", params)
        assert new
        rows.append(row)
    state.flush()
    plain = _logit_sequence(99, max(lengths))
    generator = torch.Generator().manual_seed(5)
    for step in range(max(lengths)):
        live = [i for i, n in enumerate(lengths) if step < n]
        entries = [(rows[i], step, sequences[i][step], True) for i in live] + [(IDENTITY_ROW, 0, plain[step], True)]
        order = torch.randperm(len(entries), generator=generator).tolist()
        out = _step(state, [entries[k] for k in order])
        for position, k in enumerate(order):
            if k == len(live):  # the request without dual temperature: untouched, bit for bit
                assert torch.equal(out[position], plain[step])
            else:
                assert torch.allclose(out[position], expected[live[k]][0][step], rtol=0, atol=0)
    counts = drain_high_temperature_counts({f"s{i}": n for i, n in enumerate(lengths)})
    assert counts == {f"s{i}": sum(highs) for i, (_, highs) in enumerate(expected)}
    assert 0 < sum(counts.values()) < sum(lengths)  # both temperatures were used
    assert state.rows_in_use == 0


def test_counts_ignore_discarded_positions() -> None:
    """A prefill chunk (kept=False), a step past the stop token (async scheduling) and a preemption that
    recomputes the in-flight position with different logits: only the emitted tokens count."""
    params = PARAMS[0]
    tokens = _logit_sequence(3, 8)
    recomputed = _logit_sequence(4, 1)[0]  # resumed prefill numerics differ from decode
    emitted = [*tokens[:5], recomputed, *tokens[6:8]]
    _, highs = _reference(params, torch.stack(emitted))
    state = DualTemperatureState("cpu")
    row, _ = state.admit("p", params)
    state.flush()
    _step(state, [(row, -3, _logit_sequence(5, 1)[0], False)])  # chunk ending before the prompt's end
    for index in range(7):
        _step(state, [(row, index, tokens[index], True)])  # index 6 runs, then the request is preempted
    again, new = state.admit("p", params)
    assert (again, new) == (row, False)
    state.flush()
    _step(state, [(row, 5, recomputed, True)])  # resumed with 5 committed tokens
    _step(state, [(row, 6, tokens[6], True)])
    _step(state, [(row, 7, tokens[7], True)])
    _step(state, [(row, 8, _logit_sequence(6, 1)[0], True)])  # past the stop: never emitted
    assert state.read_counts({"p": 8}) == {"p": sum(highs)}
    tau_after_last = state.ring_tau[row, 7 % RING]
    reference = DualTemperatureRows.from_params([params])
    for step in emitted:
        _, _, reference.tau = dual_temperature_step(step.unsqueeze(0), reference)
    assert torch.equal(tau_after_last, reference.tau[0])


def test_a_count_that_is_not_exactly_known_raises() -> None:
    state = DualTemperatureState("cpu")
    far, _ = state.admit("far", PARAMS[1])
    gap, _ = state.admit("gap", PARAMS[1])
    state.flush()
    for index in range(RING + 3):  # runs RING + 2 positions past the 1 token it emits
        _step(state, [(far, index, _logit_sequence(index, 1)[0], True)])
    _step(state, [(gap, 0, _logit_sequence(0, 1)[0], True)])
    _step(state, [(gap, 2, _logit_sequence(1, 1)[0], True)])  # position 1 never ran
    with pytest.raises(RuntimeError, match=r"far .*emitted 1"):
        state.read_counts({"far": 1})
    with pytest.raises(RuntimeError, match=r"gap .*broken steps 1"):
        state.read_counts({"gap": 3})


def test_rows_are_reused_only_once_read_and_no_longer_in_a_batch_slot() -> None:
    state = DualTemperatureState("cpu", initial_rows=3)
    first, _ = state.admit("a", PARAMS[1])
    state.attach(first)
    state.flush()
    _step(state, [(first, 0, torch.zeros(VOCAB), True)])  # ln 12 > 1.9: high
    assert state.read_counts({"a": 1, "unknown": 4}) == {"a": 1}
    second, _ = state.admit("b", PARAMS[1])
    assert second != first  # "a" is read but a slot still points at its row
    state.detach(first)
    third, _ = state.admit("c", PARAMS[1])
    assert third == first
    assert state.read_counts({"b": 0}) == {"b": 0}
    assert not state.holds("b") and state.holds("c")
    state.flush()
    assert state.read_counts({"c": 2}) == {}  # admitted but sampled elsewhere (another rank): no answer
