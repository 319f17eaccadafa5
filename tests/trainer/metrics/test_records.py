"""The typed records: flat names round-trip, and a step's updates combine exactly."""

from __future__ import annotations

import dataclasses
import json

import pytest

from forkrl.trainer.metrics import LearnerStepMetrics, StepRecord, flatten, unflatten
from forkrl.trainer.metrics.records import ByTokenType, ForkingStats, RatioStats
from tests.trainer.metrics.builders import learner_metrics, step_record


@pytest.mark.parametrize("trained", [True, False])
def test_flat_names_round_trip_through_json(trained: bool) -> None:
    record = step_record(3, trained)
    flat = json.loads(json.dumps(flatten(record)))
    assert unflatten(StepRecord, flat) == record
    if trained:
        assert flat["learner/clip_frac/high"] == 0.125
        assert flat["learner/other/archer/reasoning_frac"] == 0.2
        assert flat["entropy/p90"] == 1.41
    else:  # absent sub-records are left out, not written as NaN
        assert not any(k.startswith(("learner/", "trained/", "entropy/")) for k in flat)
    assert flat["generated/accuracy"] == 0.5 and flat["staleness/lag_per_sample"] == [0, 1]


def test_unflatten_names_a_missing_field() -> None:
    flat = flatten(step_record())
    del flat["generated/accuracy"]
    with pytest.raises(ValueError, match="SampleStats at generated/: missing accuracy"):
        unflatten(StepRecord, flat)


def test_combining_updates_weights_each_fraction_by_the_tokens_it_counts() -> None:
    first = learner_metrics(1, response_tokens=100, high_tokens=20, pg_tokens=20,
                            clip_frac=ByTokenType(all=0.1, high=0.5, low=0.0),
                            ratio=RatioStats(mean=1.1, min=0.9, max=1.2),
                            forking=ForkingStats(selected_frac=0.2, threshold=1.0, threshold_min=1.0,
                                                 threshold_max=1.0))
    second = learner_metrics(2, response_tokens=300, high_tokens=60, pg_tokens=60,
                             clip_frac=ByTokenType(all=0.2, high=0.25, low=0.1875),
                             ratio=RatioStats(mean=0.9, min=0.5, max=1.1),
                             forking=ForkingStats(selected_frac=0.2, threshold=0.5, threshold_min=0.4,
                                                  threshold_max=0.6))
    both = LearnerStepMetrics.combine([first, second])
    # Clipped tokens: 10 + 60 of 400; high: 10 + 15 of 80; low: 0 + 45 of 320.
    assert both.clip_frac == ByTokenType(all=70 / 400, high=25 / 80, low=45 / 320)
    assert both.ratio == RatioStats(mean=(110 + 270) / 400, min=0.5, max=1.2)
    assert both.forking == ForkingStats(selected_frac=0.2, threshold=0.75, threshold_min=0.4, threshold_max=1.0)
    assert both.response_tokens == 400 and both.pg_tokens == 80 and both.updates == 2
    assert both.weight_version == second.weight_version and isinstance(both.weight_version, int)
    assert both.loss == pytest.approx((first.loss + second.loss) / 2)
    assert both.entropy is None  # percentiles of two mini-batches do not combine
    assert LearnerStepMetrics.combine([first]) is first
    assert dataclasses.replace(both, updates=1) != both
