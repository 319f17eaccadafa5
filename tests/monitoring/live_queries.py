"""Every PromQL expression the chart ships, made ready to run against a real Prometheus that scraped a local
run (tests/trainer/controller/smoke.yaml): each target of each panel of the generated dashboards (Grafana's
variables substituted) and each alert rule (its comparison stripped: a healthy run must not fire an alert,
but the series it compares must exist).

`NO_LOCAL_DATA` names the expressions a local run cannot give data, each with the reason; `problems` reports
an expression without data that is not listed, a listed one that returned data, and a listed one that no
longer exists, so the list cannot rot.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.monitoring.chart import dashboard_targets
from tests.monitoring.live_prometheus import Series

DASHBOARD_DATA_ENV = "FORKRL_DASHBOARD_DATA"
"""A file path: the live test writes every query's result there (tests/monitoring/render_dashboards.py plots it)."""
RATE_INTERVAL = "15s"
"""Grafana's $__rate_interval at a 1 s scrape interval and a 1 s step would be 4 s; 15 s smooths a short run."""

OPERATOR_ONLY = ("operator metric: a local run has no operator (tests/operator/test_prometheus_scrape.py has a real "
                 "Prometheus scrape one on the test control plane)")
"""The reason of every expression over the operator's metrics: test_prometheus_scrape.py checks exactly those."""
NO_LOCAL_DATA: dict[str, str] = {
    "forkrl-experiment / KL by token type / A": "the run's forking objective has no KL term, so its learner "
    "reports no KL (Archer's low-entropy tokens or a KL penalty export it)",
    "forkrl-services / Sandbox kills, restarts, rejections / B": "no verifier worker is replaced in a healthy "
    "run, and the restarts counter has a series per cause only from the first restart on",
    "forkrl-services / Reconciles by outcome / A": OPERATOR_ONLY,
    "forkrl-services / Reconcile duration / A": OPERATOR_ONLY,
    "forkrl-services / Reconcile duration / B": OPERATOR_ONLY,
    "forkrl-services / RLVRJobs by phase / A": OPERATOR_ONLY,
    "forkrl-services / Children applied and deleted / A": OPERATOR_ONLY,
    "forkrl-services / Children applied and deleted / B": OPERATOR_ONLY,
    "forkrl-services / Status writes and events / A": OPERATOR_ONLY,
    "forkrl-services / Status writes and events / B": OPERATOR_ONLY,
    "alert ForkrlVerifierErrors": "its ratio's numerator counts internal_error items, which a healthy run has "
    "none of (the items it divides by are the 'Verifier items by reason' panel)",
    "alert ForkrlOperatorReconcileErrors": OPERATOR_ONLY,
}


@dataclass(frozen=True)
class LiveQuery:
    id: str
    """`<dashboard uid> / <panel title> / <refId>`, or `alert <name>` (`[i]` per operand of a top-level `and`)."""
    shipped: str
    """The expression as the chart ships it."""
    query: str
    """What is sent to Prometheus."""


def panel_queries(run: str, rate_interval: str = RATE_INTERVAL) -> list[LiveQuery]:
    """Every target of every panel of the generated dashboards (the JSON the chart ships)."""
    assert re.fullmatch(r"[\w-]+", run), f"{run!r}: substituted as is into run=~\"$run\""
    queries = []
    for uid, title, target in dashboard_targets():
        expr = target["expr"]
        query = expr.replace("$__rate_interval", rate_interval).replace("$run", run)
        assert "$" not in query, f"{uid}/{title}: unknown variable in {expr}"
        queries.append(LiveQuery(f"{uid} / {title} / {target['refId']}", expr, query))
    return queries


def alert_queries(rules: dict[str, Any]) -> list[LiveQuery]:
    """The rule file's alerts (a PrometheusRule's `spec`), one query per operand of a top-level `and`, each
    without its comparison."""
    queries = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            operands = split_top_level(rule["expr"], "and")
            for index, operand in enumerate(operands, start=1):
                name = f"alert {rule['alert']}" + (f" [{index}]" if len(operands) > 1 else "")
                queries.append(LiveQuery(name, rule["expr"], strip_comparison(operand)))
    return queries


_COMPARISON = re.compile(r"==|!=|>=|<=|>|<")
_OPEN, _CLOSE = "([{", ")]}"


def _top_level(expr: str) -> list[bool]:
    """For each character: whether it stands outside every bracket and string literal."""
    flags, depth, quote = [], 0, ""
    for index, char in enumerate(expr):
        if quote:
            flags.append(False)
            if char == quote and expr[index - 1] != "\\":
                quote = ""
            continue
        if char in "\"'`":
            quote = char
        elif char in _OPEN:
            depth += 1
        elif char in _CLOSE:
            depth -= 1
            flags.append(False)
            continue
        flags.append(depth == 0 and not quote)
    if depth or quote:
        raise ValueError(f"unbalanced brackets or quotes in {expr!r}")
    return flags


def split_top_level(expr: str, keyword: str) -> list[str]:
    """`expr` split at each top-level `keyword` (a binary set operator: and, or, unless); a vector matching
    clause after it (`on(...)`, `ignoring(...)`) is dropped from the right operand."""
    flags = _top_level(expr)
    parts, start = [], 0
    for match in re.finditer(rf"(?<![\w:]){keyword}(?![\w:])", expr):
        if flags[match.start()]:
            parts.append(expr[start:match.start()])
            start = match.end()
    parts.append(expr[start:])
    return [re.sub(r"^(?:on|ignoring)\s*\([^)]*\)", "", part.strip()).strip() for part in parts]


def strip_comparison(expr: str) -> str:
    """The left-hand side of a top-level comparison (`x < 0.05` -> `x`); `expr` itself when it has none."""
    flags = _top_level(expr)
    for match in _COMPARISON.finditer(expr):
        if flags[match.start()]:
            return expr[:match.start()].strip()
    return expr.strip()


def has_data(series: list[Series]) -> bool:
    """At least one series with one finite value (a quantile over buckets that never moved is all NaN)."""
    return any(item.finite for item in series)


def problems(queries: list[LiveQuery], results: dict[str, list[Series]],
             no_local_data: dict[str, str] = NO_LOCAL_DATA) -> list[str]:
    """What is wrong with the results: unlisted expressions without data, listed ones with data, stale entries."""
    found = []
    ids = [query.id for query in queries]
    assert len(ids) == len(set(ids)), "two expressions share an id"
    for stale in sorted(set(no_local_data) - set(ids)):
        found.append(f"{stale}: listed in NO_LOCAL_DATA, but no panel or alert has this expression")
    for query in queries:
        series = results[query.id]
        if query.id in no_local_data and has_data(series):
            found.append(f"{query.id}: returned data ({query.query}), but NO_LOCAL_DATA says it cannot: "
                         f"{no_local_data[query.id]}")
        elif query.id not in no_local_data and not has_data(series):
            what = f"{len(series)} series, none with a finite value" if series else "no series"
            found.append(f"{query.id}: {what}: {query.query}")
    return found


def save_results(path: Path, queries: list[LiveQuery], results: dict[str, list[Series]]) -> None:
    """Every query and the series it returned, as JSON (the input of render_dashboards.py)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {query.id: {"shipped": query.shipped, "query": query.query,
                       "series": [{"labels": item.labels, "points": item.points} for item in results[query.id]]}
            for query in queries}
    path.write_text(json.dumps(data, allow_nan=True))
