"""Spec 8.4 R2: DAPO dynamic-sampling filter and refill bookkeeping."""

from __future__ import annotations

import pytest

from forkrl.trainer.dynamic_sampling import DynamicSampler, DynamicSamplingExhausted, group_is_informative


def test_r2_filter_rule() -> None:
    assert not group_is_informative([1, 1, 1, 1])
    assert not group_is_informative([0, 0, 0, 0])
    assert group_is_informative([1, 0, 0, 1])
    assert group_is_informative([0])  # size-1 groups are kept
    assert not group_is_informative([])


def test_r2_refill_stops_at_exact_batch_size() -> None:
    sampler: DynamicSampler[str] = DynamicSampler(train_batch_size=3, max_gen_batches=10)
    sampler.begin_round()
    stats = sampler.add(["a", "b", "c"], [[1, 1], [0, 1], [0, 0]])
    assert (stats.kept, stats.dropped_all_max, stats.dropped_all_min) == (1, 1, 1)
    assert not sampler.is_full
    sampler.begin_round()
    sampler.add(["d", "e", "f"], [[1, 0], [0, 1], [1, 0]])
    assert sampler.is_full
    assert sampler.take() == ["b", "d", "e"]  # truncated to exactly train_batch_size groups, in order
    assert sampler.rounds == 2


def test_r2_eleventh_round_raises_clearly() -> None:
    sampler: DynamicSampler[int] = DynamicSampler(train_batch_size=2, max_gen_batches=10)
    for round_index in range(10):
        sampler.begin_round()
        sampler.add([round_index], [[1, 1, 1]])
    with pytest.raises(DynamicSamplingExhausted, match="max_gen_batches=10"):
        sampler.begin_round()


def test_unlimited_rounds_and_filter_only_mode() -> None:
    unlimited: DynamicSampler[int] = DynamicSampler(train_batch_size=1, max_gen_batches=0)
    for _ in range(25):
        unlimited.begin_round()
    filter_only: DynamicSampler[str] = DynamicSampler(train_batch_size=4, mode="filter_only")
    assert not filter_only.is_full
    filter_only.begin_round()
    filter_only.add(["a", "b", "c"], [[1, 0], [1, 1], [0, 1]])
    assert filter_only.take() == ["a", "c"]  # Archer: drop without refilling, the batch shrinks


def test_take_before_full_and_bad_sizes() -> None:
    sampler: DynamicSampler[int] = DynamicSampler(train_batch_size=2)
    with pytest.raises(RuntimeError, match="generate more"):
        sampler.take()
    with pytest.raises(ValueError, match="train_batch_size"):
        DynamicSampler(train_batch_size=0)
    with pytest.raises(ValueError, match="metric lists"):
        sampler.add([1, 2], [[1, 0]])
