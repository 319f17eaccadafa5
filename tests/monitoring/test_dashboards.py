"""The Grafana dashboards built with grafana-foundation-sdk: the chart ships exactly the generated JSON, the
layout is sound, and every panel's PromQL parses (promtool) and queries series, labels and legend labels that
the real registries export."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from forkrl.operator.dashboards import dashboard_files
from forkrl.rollout.metric_spec import TARGET_LABELS
from tests.monitoring.chart import Chart, dashboard_targets, grouping_labels, selectors
from tests.monitoring.exported import exported_series

DASHBOARDS = {path.stem: json.loads(text) for path, text in dashboard_files().items()}
REQUIRED_PANELS = {
    "forkrl-experiment": {
        "Reward", "Accuracy", "Response length", "Token entropy percentiles", "Forking threshold",
        "Selected token fraction", "Clip fraction by token type", "KL by token type", "Train-inference mismatch",
        "Step time by phase", "Tokens per second", "Weight-version lag",
    },
    "forkrl-services": {
        "Rollout requests by outcome", "Rollout tokens per second", "Rollout queue", "Verifier items by reason",
        "Verifier item latency", "Sandbox kills, restarts, rejections", "Reconciles by outcome",
        "Learner peak memory",
    },
}


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def test_the_chart_ships_the_generated_dashboards(chart: Chart) -> None:
    config_map = chart.render()[("ConfigMap", "demo-forkrl-dashboards")]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = {key.removesuffix(".json"): json.loads(text) for key, text in config_map["data"].items()}
    assert shipped == DASHBOARDS
    assert ("ConfigMap", "demo-forkrl-dashboards") not in chart.render("--set", "grafanaDashboard.enabled=false")


@pytest.mark.parametrize("uid", sorted(REQUIRED_PANELS))
def test_dashboard_has_its_panels_laid_out_without_overlap(uid: str) -> None:
    dashboard = DASHBOARDS[uid]
    assert dashboard["uid"] == uid and "forkrl" in dashboard["tags"]
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource", "run"]
    titles = [panel["title"] for panel in _panels(dashboard)]
    assert REQUIRED_PANELS[uid] <= set(titles) and len(titles) == len(set(titles))
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and 0 not in ids
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        columns, rows = range(grid["x"], grid["x"] + grid["w"]), range(grid["y"], grid["y"] + grid["h"])
        area = {(x, y) for x in columns for y in rows}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
    for panel in _panels(dashboard):
        assert panel["description"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert [t["refId"] for t in panel["targets"]] == [chr(ord("A") + i) for i in range(len(panel["targets"]))]


def test_panels_query_exported_series_and_labels() -> None:
    series = exported_series()
    for uid, title, target in dashboard_targets():
        expr = target["expr"]
        used = selectors(expr)
        assert used, f"{uid}/{title}: {expr}"
        known = set(TARGET_LABELS)
        for metric, labels in used:
            assert metric in series, f"{uid}/{title}: {metric} is not exported"
            assert labels <= series[metric], f"{uid}/{title}: {metric} has no label {labels - series[metric]}"
            known |= series[metric]
        grouping = grouping_labels(expr)
        assert grouping <= known | {"le"}, f"{uid}/{title}: {expr}"
        # A legend names labels the result still has: the grouping labels of an aggregation, else the series'.
        legend = set(re.findall(r"\{\{(\w+)\}\}", target["legendFormat"]))
        assert legend <= (grouping if expr.startswith(("sum", "histogram_quantile")) else known), f"{uid}/{title}"


def test_every_expression_parses(promtool: Path, tmp_path: Path) -> None:
    """promtool parses each panel's PromQL as a recording rule (Grafana's $__rate_interval made concrete)."""
    rules = [{"record": f"forkrl:panel_{i}", "expr": target["expr"].replace("$__rate_interval", "5m")}
             for i, (_, _, target) in enumerate(dashboard_targets())]
    path = tmp_path / "panels.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = subprocess.run([str(promtool), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
