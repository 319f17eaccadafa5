"""`helm template` of the operator chart without a cluster, the PromQL the chart ships (alert rules, dashboard
targets), and the metric selectors of a PromQL expression."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from forkrl.operator.dashboards import dashboard_files
from tests.operator.harness import CHART

_SELECTOR = re.compile(r"\b(forkrl_[a-z0-9_]+)\s*(?:\{([^}]*)\})?")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
ALERT_RULE = ("PrometheusRule", "demo-forkrl")


class Chart:
    """Renders helm/forkrl with the built helm, its home folders kept under `home`."""

    def __init__(self, helm: Path, home: Path) -> None:
        self.helm = helm
        self.env = {**os.environ, **{var: str(home / var.lower()) for var in
                                     ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME")}}

    def render(self, *args: str) -> dict[tuple[str, str], dict[str, Any]]:
        result = subprocess.run([str(self.helm), "template", "demo", str(CHART), *args], env=self.env,
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        return {(doc["kind"], doc["metadata"]["name"]): doc for doc in yaml.safe_load_all(result.stdout) if doc}

    def alert_rules(self) -> dict[str, Any]:
        """The rendered PrometheusRule's `spec` (a Prometheus rule file: `groups`), every alert enabled."""
        return self.render("--set", "alerts.enabled=true")[ALERT_RULE]["spec"]


def dashboard_targets() -> list[tuple[str, str, dict[str, Any]]]:
    """(dashboard uid, panel title, target) of every query of the generated dashboards the chart ships."""
    return [(path.stem, panel["title"], target) for path, text in sorted(dashboard_files().items())
            for panel in json.loads(text)["panels"] if panel["type"] != "row" for target in panel["targets"]]


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names its matchers use) of every forkrl selector in `expr`."""
    return [(name, set(_MATCHER.findall(body or ""))) for name, body in _SELECTOR.findall(expr)]


def grouping_labels(expr: str) -> set[str]:
    """Label names of every by/without/on/ignoring clause."""
    return {label.strip() for group in _GROUPING.findall(expr) for label in group.split(",") if label.strip()}
