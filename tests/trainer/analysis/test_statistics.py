"""The analysis statistics on constructed inputs whose answers are known exactly (or, for the histogram's
percentiles, known to within its stated resolution from numpy's exact percentile)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from forkrl.trainer.analysis.histogram import EntropyHistogram
from forkrl.trainer.analysis.overlap import OverlapStats
from forkrl.trainer.analysis.positions import bottom_entropy_positions, count_for, top_entropy_positions
from forkrl.trainer.analysis.scoring import ResponseRecord, response_entropies
from forkrl.trainer.analysis.token_table import TokenEntropyTable


def test_histogram_percentiles_within_a_bin_and_exact_counts() -> None:
    rng = np.random.default_rng(0)
    # Skewed like a reasoning model's: most tokens near zero, a long tail up to a few nats, and exact zeros.
    values = np.concatenate([10 ** rng.uniform(-7, 0.6, 20_000), np.zeros(500)])
    histogram = EntropyHistogram()
    for chunk in np.array_split(rng.permutation(values), 7):  # streamed in pieces
        histogram.add(chunk)
    assert histogram.total == values.size
    assert histogram.below_threshold == int((values < 1e-2).sum())
    assert histogram.summary()["mean"] == pytest.approx(values.mean(), rel=1e-12)
    for q in (10, 50, 80, 95, 99):
        exact = float(np.percentile(values, q, method="inverted_cdf"))
        got = histogram.percentile(q)
        if exact < histogram.low:
            assert got == 0.0
        else:
            assert abs(got - exact) <= exact * histogram.relative_resolution, (q, got, exact)
    halves = EntropyHistogram(), EntropyHistogram()
    halves[0].add(values[:7000])
    halves[1].add(values[7000:])
    halves[0].merge(halves[1])
    assert np.array_equal(halves[0].counts, histogram.counts) and halves[0].below_threshold == histogram.below_threshold


@pytest.mark.parametrize("bad", [[0.5, float("nan")], [-0.1], [25.0]])
def test_histogram_refuses_impossible_entropies(bad: list[float]) -> None:
    with pytest.raises(ValueError, match="entrop"):
        EntropyHistogram().add(np.array(bad))


def test_top_and_bottom_positions_with_ties_broken_by_position() -> None:
    entropies = np.array([0.1, 2.0, 0.5, 2.0, 0.0, 0.3, 1.0, 0.2, 0.9, 0.05])
    assert count_for(10, 0.2) == 2 and count_for(3, 0.2) == 1 and count_for(0, 0.2) == 0
    assert top_entropy_positions(entropies, 0.2).tolist() == [1, 3]
    assert top_entropy_positions(entropies, 0.3).tolist() == [1, 3, 6]
    assert bottom_entropy_positions(entropies, 0.2).tolist() == [4, 9]
    assert top_entropy_positions(np.ones(5), 0.4).tolist() == [0, 1]  # all tied: the earliest


def test_token_table_counts_where_each_token_sits() -> None:
    table = TokenEntropyTable(rho=0.2)
    # Token 7 ("but") is always the most uncertain, token 3 (".") always the least; ten tokens per response.
    for shift in range(3):
        tokens = np.array([7, 3, 5, 5, 5, 5, 5, 5, 5, 9])
        entropies = np.array([3.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 1.0 + shift])
        table.add(tokens, entropies)
    high = table.rows("high", 5, str)
    assert [(row["token_id"], row["count"]) for row in high] == [(7, 3), (9, 3)]
    assert high[0]["share_of_occurrences"] == 1.0
    low = table.rows("low", 5, str)
    assert [(row["token_id"], row["count"]) for row in low] == [(3, 3), (5, 3)]
    assert low[1]["occurrences"] == 21 and low[1]["share_of_occurrences"] == pytest.approx(3 / 21)


def test_overlap_and_entropy_change_by_token_type() -> None:
    stats = OverlapStats(rho=0.2)
    base = np.array([5.0, 4.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    # Same high positions, their entropy halved; low tokens unchanged: overlap 1.
    stats.add(base, np.where(base > 1, base / 2, base))
    # The top pair moved: one position shared out of two.
    other = np.array([5.0, 0.1, 4.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    stats.add(base, other)
    summary = stats.summary()
    assert summary["responses"] == 2
    assert summary["top_position_overlap"] == pytest.approx(3 / 4)
    # High tokens (by the base): positions 0 and 1 in both responses: (2.5 + 2 + 5 + 0.1) / 4 vs (5 + 4) * 2 / 4.
    assert summary["high_entropy_tokens"]["base_mean"] == pytest.approx(4.5)
    assert summary["high_entropy_tokens"]["change"] == pytest.approx((2.5 + 2 + 5 + 0.1) / 4 - 4.5)
    assert summary["low_entropy_tokens"]["change"] == pytest.approx((4.0 - 0.1) / 16)
    with pytest.raises(ValueError, match="one entropy per token"):
        stats.add(base, base[:5])


def test_response_entropies_read_the_distributions_that_produced_each_response_token() -> None:
    """Logits set by hand per position: uniform over 8 (ln 8), two tied favourites (ln 2), one certain (0)."""
    vocab = 8
    rows = {2: torch.zeros(vocab),
            3: torch.tensor([50.0, 50.0] + [-50.0] * (vocab - 2)),
            4: torch.tensor([80.0] + [-80.0] * (vocab - 1))}

    def logits_fn(ids: torch.Tensor) -> torch.Tensor:
        out = torch.full((1, ids.shape[1], vocab), float("nan"))  # positions that must not be read
        for position, row in rows.items():
            out[0, position] = row
        return out

    record = ResponseRecord(prompt_ids=[1, 2, 3], response_ids=[4, 5, 6], line=1)
    entropies = response_entropies(logits_fn, record)
    assert entropies == pytest.approx([math.log(vocab), math.log(2), 0.0], abs=1e-5)  # fp32 math
    # At temperature 2 the tied pair stays ln 2 and the uniform row stays ln 8.
    tempered = response_entropies(logits_fn, record, temperature=2.0)
    assert tempered[:2] == pytest.approx([math.log(8), math.log(2)], abs=1e-5)
