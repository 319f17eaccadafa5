"""The reproduction's decision rules and claim builders on constructed measurements whose verdicts follow from
numbers worked out by hand here (t quantiles from a table, not from the code under test)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from forkrl.trainer.experiments.claims import (
    Difference,
    Verdict,
    beats,
    matches_or_beats,
    problem_paired_difference,
    seed_paired_difference,
)
from forkrl.trainer.experiments.reproduction import entropy_mass_share, exported_models
from forkrl.trainer.experiments.reproduction_doc import (
    dual_temperature_claims,
    entropy_claim,
    objective_claims,
    overlap_claims,
)

T95_2DF = 4.303  # Student t, 0.975 quantile, 2 degrees of freedom (3 seeds)


def test_seed_paired_difference_is_a_t_interval_over_shared_seeds() -> None:
    # Differences 1, 2, 3 (seed 9 of `a` has no partner and is left out): mean 2, sd 1.
    d = seed_paired_difference({0: 11.0, 1: 12.0, 2: 13.0, 9: 50.0}, {0: 10.0, 1: 10.0, 2: 10.0})
    half = T95_2DF * 1 / math.sqrt(3)
    assert (d.mean, d.pairs) == (2.0, 3)
    assert d.low == pytest.approx(2 - half, abs=1e-3) and d.high == pytest.approx(2 + half, abs=1e-3)
    with pytest.raises(ValueError, match="no seed in common"):
        seed_paired_difference({0: 1.0}, {1: 1.0})


def test_problem_paired_difference_is_the_normal_interval_over_problems() -> None:
    d = problem_paired_difference([1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0])  # differences 1, 0, 0, 1
    half = 1.96 * math.sqrt(1 / 3) / 2
    assert d.mean == 0.5 and d.low == pytest.approx(0.5 - half) and d.high == pytest.approx(0.5 + half)
    with pytest.raises(ValueError, match="same non-empty problems"):
        problem_paired_difference([1.0], [1.0, 0.0])


@pytest.mark.parametrize(("low", "high", "beats_verdict", "matches_verdict"), [
    (0.5, 3.0, Verdict.HOLDS, Verdict.HOLDS),
    (-0.5, 3.0, Verdict.NOT_RESOLVED, Verdict.HOLDS),  # not worse by more than the 3-point margin
    (-4.0, 3.0, Verdict.NOT_RESOLVED, Verdict.NOT_RESOLVED),
    (-2.0, -1.0, Verdict.DOES_NOT_HOLD, Verdict.HOLDS),  # worse, but within the margin: a match
    (-6.0, -1.0, Verdict.DOES_NOT_HOLD, Verdict.DOES_NOT_HOLD),
])
def test_verdicts_depend_only_on_where_the_interval_lies(low: float, high: float, beats_verdict: Verdict,
                                                         matches_verdict: Verdict) -> None:
    d = Difference((low + high) / 2, low, high, 3)
    assert beats(d) is beats_verdict
    assert matches_or_beats(d, 3.0) is matches_verdict


def test_entropy_mass_share_of_the_top_fifth() -> None:
    assert entropy_mass_share(np.array([0.0] * 8 + [1.0, 3.0])) == 1.0  # the top 2 of 10 carry everything
    assert entropy_mass_share(np.ones(10)) == pytest.approx(0.2)
    assert entropy_mass_share(np.zeros(5)) == 0.0


def _histogram_row(share: float, mass: float) -> dict:
    percentiles = {"p50": 0.001, "p80": 0.4, "p95": 1.2}
    return {"tokens": 1000, "mean": 0.2, "share_below_0.01": share, "top20_entropy_mass": mass,
            "percentiles": percentiles}


def test_entropy_claim_needs_both_the_near_zero_share_and_the_concentrated_mass() -> None:
    claim, lines = entropy_claim({"cold start": _histogram_row(0.6, 0.9), "dapo seed 0": _histogram_row(0.7, 0.95)})
    assert claim.verdict is Verdict.HOLDS and "60.0% below 1e-2" in claim.measured
    assert any(line.startswith("| dapo seed 0 | 1000 | 70.0% |") for line in lines)
    assert entropy_claim({"cold start": _histogram_row(0.1, 0.9)})[0].verdict is Verdict.DOES_NOT_HOLD
    assert entropy_claim({"cold start": _histogram_row(0.6, 0.3)})[0].verdict is Verdict.DOES_NOT_HOLD


def _overlap_row(overlap: float, high: float, low: float) -> dict:
    return {"top_position_overlap": overlap, "high_entropy_tokens": {"change": high},
            "low_entropy_tokens": {"change": low}}


def test_overlap_claims_read_the_last_step_of_every_seed() -> None:
    overlap = {str(seed): {"5": _overlap_row(0.99, -0.1, 0.0), "10": _overlap_row(o, h, lo)}
               for seed, (o, h, lo) in enumerate([(0.9, -0.3, 0.01), (0.85, -0.2, -0.02), (0.95, -0.25, 0.0)])}
    (kept, changed), lines, curves = overlap_claims(overlap)
    # overlap - 0.5: 0.40, 0.35, 0.45 (sd 0.05); |high| - |low|: 0.29, 0.18, 0.25 (sd 0.0557): both above 0.
    assert kept.verdict is Verdict.HOLDS and changed.verdict is Verdict.HOLDS
    assert curves["step"] == [5, 10] and curves["overlap"][1] == pytest.approx(0.9)
    assert lines[-1] == "| 10 | 90.0% | -0.2500 | -0.0033 |"
    # Positions reshuffled (a third kept) with changes spread evenly: neither claim holds.
    reshuffled = {str(s): {"10": _overlap_row(o, -0.1, -0.1 - d)} for s, (o, d) in
                  enumerate([(0.3, 0.05), (0.35, 0.04), (0.32, 0.045)])}
    (kept, changed), _, _ = overlap_claims(reshuffled)
    assert kept.verdict is Verdict.DOES_NOT_HOLD and changed.verdict is Verdict.DOES_NOT_HOLD


def test_objective_claims_pair_the_arms_by_seed() -> None:
    gains = {"dapo": {0: 20.0, 1: 22.0, 2: 18.0}, "forking-top20": {0: 21.0, 1: 22.5, 2: 19.0},
             "forking-top10": {0: 15.0, 1: 16.0, 2: 14.0}, "forking-top50": {0: 19.0, 1: 21.0, 2: 18.0},
             "forking-bottom80": {0: 5.0, 1: 6.0, 2: 4.0}, "archer": {0: 10.0, 1: 12.0, 2: 9.0}}
    entropy = {"dapo": {0: 0.10, 1: 0.11, 2: 0.12}, "forking-top20": {0: 0.30, 1: 0.31, 2: 0.29},
               "forking-top10": {0: 0.2, 1: 0.2, 2: 0.2}, "forking-top50": {0: 0.15, 1: 0.16, 2: 0.17},
               "forking-bottom80": {0: 0.05, 1: 0.05, 2: 0.05}, "archer": {0: 0.2, 1: 0.1, 2: 0.12}}
    claims = {c.number: c for c in objective_claims(gains, entropy)}
    # top20 - dapo: 1, 0.5, 1 -> mean 0.83, half 4.303 * 0.289 / sqrt(3) = 0.72: within the margin.
    assert claims["3a"].verdict is Verdict.HOLDS and "+0.8 points" in claims["3a"].measured
    assert claims["3b"].verdict is Verdict.HOLDS  # dapo - bottom80: 15, 16, 14
    assert claims["3c"].verdict is Verdict.HOLDS  # top20 - top10 / top50 / dapo: about +0.1, +0.14, +0.19
    assert claims["4a"].verdict is Verdict.DOES_NOT_HOLD  # archer - dapo: -10, -10, -9
    assert claims["4b"].verdict is Verdict.NOT_RESOLVED  # archer - dapo entropy: +0.10, -0.01, 0.00
    entropy["forking-top50"] = {0: 0.5, 1: 0.5, 2: 0.5}  # clearly above top-20%
    assert {c.number: c for c in objective_claims(gains, entropy)}["3c"].verdict is Verdict.DOES_NOT_HOLD
    entropy["forking-top50"] = {0: 0.35, 1: 0.25, 2: 0.29}  # top20 - top50: -0.05, +0.06, 0.00
    assert {c.number: c for c in objective_claims(gains, entropy)}["3c"].verdict is Verdict.NOT_RESOLVED


def test_dual_temperature_claims_compare_paired_cells() -> None:
    temps = (0.7, 1.0, 1.3)
    per_problem = {(h, lo): [0.5, 0.5, 0.5, 0.5] for h in temps for lo in temps}
    per_problem[(0.7, 1.0)] = [0.0, 0.25, 0.0, 0.25]  # lowering t_high: much worse
    per_problem[(1.0, 0.7)] = [0.5, 0.75, 0.5, 0.5]   # lowering t_low: no worse
    per_problem[(1.3, 1.0)] = [0.5, 0.25, 0.75, 0.5]  # raising either: the same on average
    per_problem[(1.0, 1.3)] = [0.75, 0.5, 0.5, 0.25]
    cells = [{"t_high": h, "t_low": lo, "avg_at_k": sum(v) / 4, "per_problem": v} for (h, lo), v in per_problem.items()]
    (lowering, raising), lines = dual_temperature_claims({"cells": cells})
    assert lowering.verdict is Verdict.HOLDS and "+43.8 points" in lowering.measured
    assert raising.verdict is Verdict.NOT_RESOLVED
    assert lines[2] == "| 0.7 | 50.0% | 12.5% | 50.0% |"


def test_exported_models_end_with_the_final_model(tmp_path: Path) -> None:
    for step in (10, 5):
        (tmp_path / "models" / f"step_{step:08d}").mkdir(parents=True)
    (tmp_path / "summary.json").write_text(json.dumps({"steps": 20}))
    assert exported_models(tmp_path) == [(5, tmp_path / "models/step_00000005"),
                                         (10, tmp_path / "models/step_00000010"), (20, tmp_path / "final_model")]


def test_answered_line_flags_format_adoption() -> None:
    from forkrl.trainer.experiments.reproduction_doc import answered_line
    from forkrl.trainer.experiments.results import ArmResult

    def arm(before: float, after: float) -> ArmResult:
        return ArmResult("x", 0, (), (), {"d": {"answered_before": before, "answered_after": after}})

    format_task = answered_line({"dapo": {0: arm(0.4, 0.9), 1: arm(0.5, 1.0)}}, "d")
    assert "45.0% before RL, 95.0% after" in format_task and "adopting the rewarded answer format" in format_task
    assert "adopting" not in answered_line({"dapo": {0: arm(1.0, 1.0)}}, "d")
    assert answered_line({"dapo": {0: ArmResult("x", 0, (), (), {"d": {}})}}, "d") == ""
