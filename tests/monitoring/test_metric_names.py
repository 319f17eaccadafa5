"""Metric names follow `forkrl_<component>_<what>_<unit>`, each component's registry exports exactly the
specs it declares, and docs/metrics.md is the table generated from them."""

from __future__ import annotations

import pytest

from forkrl.operator.crd import REPO_ROOT
from forkrl.operator.metrics import OPERATOR_METRICS
from forkrl.operator.metrics_docs import METRICS_DOC_PATH, all_metrics, metrics_markdown
from forkrl.rollout.metric_spec import MetricSpec, naming_problem
from forkrl.rollout.metrics import ROLLOUT_METRICS
from forkrl.rollout.verifier.metrics import VERIFIER_METRICS
from forkrl.trainer.metrics.prometheus import LEARNER_METRICS, TRAINER_METRICS
from tests.monitoring.exported import exported_families, exported_series

DECLARED = {
    "controller": (*TRAINER_METRICS, *LEARNER_METRICS),
    "rollout": ROLLOUT_METRICS,
    "verifier": VERIFIER_METRICS,
    "operator": OPERATOR_METRICS,
}


@pytest.mark.parametrize("component", sorted(DECLARED))
def test_each_registry_exports_exactly_its_declared_metrics(component: str) -> None:
    assert exported_families(component) == {spec.name for spec in DECLARED[component]}


def test_every_series_carries_the_declared_labels_and_run_where_a_run_exists() -> None:
    series = exported_series()
    for spec in all_metrics():
        for name in spec.series:
            assert series[name] - {"le"} == set(spec.labels), name
        assert ("run" in spec.labels) == (spec.component != "operator"), spec.name


def test_names_are_unique_and_follow_the_rule() -> None:
    names = [spec.name for spec in all_metrics()]
    assert len(names) == len(set(names))
    assert all(naming_problem(spec) is None for spec in all_metrics())


@pytest.mark.parametrize(
    ("name", "kind", "problem"),
    [
        ("forkrl_verifier_queue_depth", "gauge", "no unit suffix"),
        ("forkrl_rollout_requests", "counter", "ends in _total"),
        ("forkrl_rollout_queue_depth_requests_total", "gauge", "ends in _total"),
        ("forkrl_trainer_step_duration", "histogram", "_seconds"),
        ("forkrl_scheduler_wait_seconds", "gauge", "not forkrl_<"),
        ("forkrl_trainer_Reward", "gauge", "not forkrl_<"),
    ],
)
def test_badly_named_metrics_are_refused(name: str, kind: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        MetricSpec(name, kind, "help")  # type: ignore[arg-type]


def test_docs_metrics_md_is_generated_from_the_code() -> None:
    text = metrics_markdown()
    assert (REPO_ROOT / METRICS_DOC_PATH).read_text() == text, "run `forkrl crd --write` and commit docs/metrics.md"
    for spec in all_metrics():
        assert f"| {spec.component} | `{spec.name}` | {spec.kind} |" in text
