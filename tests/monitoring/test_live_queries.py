"""The expressions the live Prometheus test runs (tests/trainer/controller/test_e2e.py queries them on a real
run): comparisons stripped at the top level only, `and` operands split, Grafana variables substituted, and
the check that keeps NO_LOCAL_DATA honest."""

from __future__ import annotations

import math

import pytest

from tests.monitoring.chart import Chart
from tests.monitoring.live_prometheus import METRICS_URL, Series
from tests.monitoring.live_queries import (
    NO_LOCAL_DATA,
    LiveQuery,
    alert_queries,
    panel_queries,
    problems,
    split_top_level,
    strip_comparison,
)


@pytest.mark.parametrize(
    ("expr", "left"),
    [
        ("forkrl_trainer_entropy_mean_nats < 0.05", "forkrl_trainer_entropy_mean_nats"),
        ("changes(forkrl_trainer_step[30m]) == 0", "changes(forkrl_trainer_step[30m])"),
        ("max by (run) (a) - min by (run) (b) >= 2", "max by (run) (a) - min by (run) (b)"),
        ('sum(rate(x{reason="internal_error",a!="b"}[5m])) / sum(rate(x[5m])) > 0.05',
         'sum(rate(x{reason="internal_error",a!="b"}[5m])) / sum(rate(x[5m]))'),
        ('x{a=~"<|>"} != bool 1', 'x{a=~"<|>"}'),
        ('x{a="=="}', 'x{a="=="}'),  # no comparison outside the string
        ("(max_over_time(r[2h]) - min_over_time(r[2h])) < 0.01", "(max_over_time(r[2h]) - min_over_time(r[2h]))"),
    ],
)
def test_strip_comparison_keeps_the_left_hand_side(expr: str, left: str) -> None:
    assert strip_comparison(expr) == left


def test_split_top_level_and() -> None:
    assert split_top_level("changes(x[30m]) == 0 and x", "and") == ["changes(x[30m]) == 0", "x"]
    assert split_top_level('x{r="a and b"} and on (run) y', "and") == ['x{r="a and b"}', "y"]
    assert split_top_level("sum(band_total and brand) > 1", "and") == ["sum(band_total and brand) > 1"]
    with pytest.raises(ValueError, match="unbalanced"):
        split_top_level("sum(x", "and")


def test_alert_queries_of_the_chart(chart: Chart) -> None:
    rules = chart.render("--set", "alerts.enabled=true")[("PrometheusRule", "demo-forkrl")]["spec"]
    queries = {query.id: query.query for query in alert_queries(rules)}
    assert queries["alert ForkrlTrainingStalled [1]"] == "changes(forkrl_trainer_step[30m])"
    assert queries["alert ForkrlTrainingStalled [2]"] == "forkrl_trainer_step"
    assert queries["alert ForkrlEntropyCollapse"] == "forkrl_trainer_entropy_mean_nats"
    assert queries["alert ForkrlRewardFlat [2]"] == "changes(forkrl_trainer_step[2h])"
    assert queries["alert ForkrlRolloutQueueSaturated"] == "forkrl_rollout_queue_depth_requests"
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {query_id.split()[1] for query_id in queries} == alerts
    for query in queries.values():
        assert strip_comparison(query) == query, query  # nothing left to strip


def test_panel_queries_substitute_every_variable() -> None:
    queries = panel_queries("smoke-1")
    assert len(queries) > 40 and len({query.id for query in queries}) == len(queries)
    for query in queries:
        assert "$" not in query.query
        assert ('run=~"smoke-1"' in query.query) == ("$run" in query.shipped), query
        assert ("[15s]" in query.query) == ("$__rate_interval" in query.shipped), query
    assert {key for key in NO_LOCAL_DATA if not key.startswith("alert ")} <= {query.id for query in queries}
    with pytest.raises(AssertionError):
        panel_queries('smoke"}')


def test_problems_names_missing_unexpected_and_stale_entries() -> None:
    queries = [LiveQuery("a", "x", "x"), LiveQuery("b", "y", "y"), LiveQuery("c", "z", "z")]
    data, nan = [Series({}, [(0.0, 1.0)])], [Series({}, [(0.0, math.nan)])]
    assert problems(queries, {"a": data, "b": [], "c": data}, {"b": "why"}) == []
    found = problems(queries, {"a": nan, "b": data, "c": []}, {"b": "why", "gone": "why"})
    assert [line.split(":")[0] for line in found] == ["gone", "a", "b", "c"]
    assert "none with a finite value" in found[1] and "NO_LOCAL_DATA says it cannot: why" in found[2]
    assert "no series" in found[3]


def test_metrics_url_lines() -> None:
    assert METRICS_URL.findall("metrics: http://127.0.0.1:4100/metrics") == ["127.0.0.1:4100"]
    assert METRICS_URL.findall("metrics: http://127.0.0.1:4101/metrics (rollout-0)") == ["127.0.0.1:4101"]
    assert METRICS_URL.findall("metrics: dropped the records past step 3 from metrics.jsonl") == []
