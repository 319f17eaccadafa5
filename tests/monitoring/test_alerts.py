"""The chart's PrometheusRule: rendered only when `alerts.enabled`, valid for `promtool check rules`, every
alert queries series a real registry exports, and `promtool test rules` proves each alert fires on a
failing run and stays quiet on healthy ones (series in the tests below, thresholds the chart's defaults)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from forkrl.rollout.metric_spec import TARGET_LABELS
from tests.monitoring.chart import ALERT_RULE, Chart, grouping_labels, selectors
from tests.monitoring.exported import exported_series


@pytest.fixture(scope="module")
def rules(chart: Chart) -> dict[str, Any]:
    """The rendered PrometheusRule's `spec` (a Prometheus rule file: `groups`)."""
    return chart.alert_rules()


def _alerts(rules: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}


def test_rule_is_rendered_only_when_enabled_and_each_alert_can_be_switched_off(chart: Chart) -> None:
    assert ALERT_RULE not in chart.render()
    rendered = chart.render("--set", "alerts.enabled=true", "--set", "alerts.rewardFlat.enabled=false",
                            "--set", "alerts.labels.release=prom", "--set", "alerts.entropyCollapse.nats=0.2")
    rule = rendered[ALERT_RULE]
    assert rule["metadata"]["labels"]["release"] == "prom"
    alerts = _alerts(rule["spec"])
    assert "ForkrlRewardFlat" not in alerts and len(alerts) == 7
    assert alerts["ForkrlEntropyCollapse"]["expr"] == "forkrl_trainer_entropy_mean_nats < 0.2"


def test_promtool_checks_the_rules(rules: dict[str, Any], promtool: Path, tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    result = subprocess.run([str(promtool), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


def test_alerts_query_exported_series_and_labels(rules: dict[str, Any]) -> None:
    series = exported_series()
    for name, rule in _alerts(rules).items():
        used = selectors(rule["expr"])
        assert used, name
        known = set(TARGET_LABELS)
        for metric, labels in used:
            assert metric in series, f"{name}: {metric} is not exported"
            assert labels <= series[metric], f"{name}: {metric} has no label {labels - series[metric]}"
            known |= series[metric]
        assert grouping_labels(rule["expr"]) <= known, name
        # Every label an annotation names survives the expression's aggregation.
        for text in rule["annotations"].values():
            assert set(re.findall(r"\$labels\.(\w+)", text)) <= known, name


# alert -> (input series, eval time, expected labels of the alerts firing then). Each has healthy runs too.
CASES: dict[str, tuple[list[tuple[str, str]], str, list[dict[str, str]]]] = {
    "ForkrlTrainingStalled": (
        [
            ('forkrl_trainer_step{run="stalled"}', "0+1x10 10x60"),
            ('forkrl_trainer_step{run="busy"}', "0+1x70"),
            ('forkrl_trainer_step{run="finished"}', "0+1x10 10x10 stale"),  # the controller exited
        ],
        "70m",
        [{"run": "stalled", "severity": "critical"}],
    ),
    "ForkrlEntropyCollapse": (
        [
            ('forkrl_trainer_entropy_mean_nats{run="collapsed"}', "0.6 0.5 0.2 0.01x60"),
            ('forkrl_trainer_entropy_mean_nats{run="healthy"}', "0.6x60"),
            ('forkrl_trainer_entropy_mean_nats{run="dipped"}', "0.6x20 0.01x10 0.6x30"),
        ],
        "45m",
        [{"run": "collapsed", "severity": "warning"}],
    ),
    "ForkrlRewardFlat": (
        [
            ('forkrl_trainer_reward{run="flat"}', "0.3x200"),
            ('forkrl_trainer_step{run="flat"}', "0+1x200"),
            ('forkrl_trainer_reward{run="learning"}', "0+0.001x200"),
            ('forkrl_trainer_step{run="learning"}', "0+1x200"),
            ('forkrl_trainer_reward{run="idle"}', "0.3x200"),  # flat because no step ran: the stall alert's job
            ('forkrl_trainer_step{run="idle"}', "5x200"),
        ],
        "150m",
        [{"run": "flat", "severity": "warning"}],
    ),
    "ForkrlRolloutWeightsBehind": (
        [
            ('forkrl_trainer_weight_version{run="stuck"}', "0+1x60"),
            ('forkrl_rollout_weight_version{run="stuck",replica="r0"}', "0+1x60"),
            ('forkrl_rollout_weight_version{run="stuck",replica="r1"}', "-1 0x60"),
            ('forkrl_trainer_weight_version{run="offpolicy"}', "0+1x60"),
            ('forkrl_rollout_weight_version{run="offpolicy",replica="r0"}', "0 0+1x59"),  # one version behind
        ],
        "40m",
        [{"run": "stuck", "severity": "warning"}],
    ),
    "ForkrlVerifierErrors": (
        [
            ('forkrl_verifier_items_total{run="broken",replica="v0",task="math",reason="ok"}', "0+100x60"),
            ('forkrl_verifier_items_total{run="broken",replica="v0",task="math",reason="internal_error"}', "0+10x60"),
            ('forkrl_verifier_items_total{run="fine",replica="v0",task="math",reason="ok"}', "0+100x60"),
            ('forkrl_verifier_items_total{run="fine",replica="v0",task="math",reason="wrong_answer"}', "0+100x60"),
            ('forkrl_verifier_items_total{run="fine",replica="v0",task="math",reason="internal_error"}', "0+1x60"),
        ],
        "40m",
        [{"run": "broken", "severity": "warning"}],
    ),
    "ForkrlVerifierQueueFull": (
        [
            ('forkrl_verifier_rejected_items_total{run="overloaded",replica="v0"}', "0+5x60"),
            ('forkrl_verifier_rejected_items_total{run="fine",replica="v0"}', "0x60"),
            ('forkrl_verifier_rejected_items_total{run="burst",replica="v0"}', "0 8 8x60"),  # one burst
        ],
        "40m",
        [{"run": "overloaded", "severity": "warning"}],
    ),
    "ForkrlRolloutQueueSaturated": (
        [
            ('forkrl_rollout_queue_depth_requests{run="busy",replica="r0"}', "2000x40"),
            ('forkrl_rollout_queue_depth_requests{run="busy",replica="r1"}', "10x40"),
            ('forkrl_rollout_queue_depth_requests{run="spiky",replica="r0"}', "2000x10 0x30"),  # drains per step
        ],
        "30m",
        [{"run": "busy", "replica": "r0", "severity": "warning"}],
    ),
    "ForkrlOperatorReconcileErrors": (
        [
            ('forkrl_operator_reconciles_total{pod="op-a",outcome="error"}', "0+1x60"),
            ('forkrl_operator_reconciles_total{pod="op-a",outcome="ok"}', "0+10x60"),
            ('forkrl_operator_reconciles_total{pod="op-b",outcome="error"}', "0x20 1x40"),  # one failure
            ('forkrl_operator_reconciles_total{pod="op-b",outcome="ok"}', "0+10x60"),
        ],
        "45m",
        [{"pod": "op-a", "severity": "warning"}],
    ),
}


def _expected_annotations(rule: dict[str, Any], labels: dict[str, str]) -> dict[str, str]:
    return {key: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
            for key, text in rule["annotations"].items()}


def test_every_alert_has_a_unit_test(rules: dict[str, Any]) -> None:
    assert set(_alerts(rules)) == set(CASES)


@pytest.mark.parametrize("alert", sorted(CASES))
def test_promtool_unit_test(alert: str, rules: dict[str, Any], promtool: Path, tmp_path: Path) -> None:
    series, eval_time, firing = CASES[alert]
    rule = _alerts(rules)[alert]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    quiet_time = "1m"  # before any `for` has elapsed nothing fires
    test = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{
            "name": alert,
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series],
            "alert_rule_test": [
                {"eval_time": eval_time, "alertname": alert, "exp_alerts": [
                    {"exp_labels": labels, "exp_annotations": _expected_annotations(rule, labels)} for labels in firing
                ]},
                {"eval_time": quiet_time, "alertname": alert, "exp_alerts": []},
            ],
        }],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test, sort_keys=False))
    result = subprocess.run([str(promtool), "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
