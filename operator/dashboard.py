"""The Grafana dashboard of a forkrl run, built from the controller's metric table so every panel names
a metric the controller exports (`forkrl crd --write` writes helm/forkrl/files/grafana-dashboard.json).
"""

from __future__ import annotations

import json
from typing import Any

from forkrl.trainer.controller.recorder import GAUGES, LABELLED

RUN = 'run=~"$run"'
STEP_SECONDS = f"rate(forkrl_trainer_step_duration_seconds_bucket{{{RUN}}}[10m])"


def _gauge(key: str) -> str:
    return GAUGES[key][0]


def _labelled(prefix: str) -> tuple[str, str]:
    name, _, label = LABELLED[prefix]
    return name, label


def _panel(
    panel_id: int,
    title: str,
    targets: list[tuple[str, str]],
    x: int,
    y: int,
    unit: str = "short",
    description: str = "",
) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def panels() -> list[dict[str, Any]]:
    entropy, quantile = _labelled("entropy/p")
    clip, clip_type = _labelled("clip_frac")
    kl, kl_type = _labelled("kl")
    phase_seconds, phase = _labelled("time/")
    evaluation, dataset = _labelled("eval/")
    specs: list[tuple[str, list[tuple[str, str]], str, str]] = [
        ("Reward", [(f"{_gauge('reward/mean')}{{{RUN}}}", "{{run}}")], "short", "Mean shaped reward per step."),
        (
            "Accuracy",
            [
                (f"{_gauge('accuracy')}{{{RUN}}}", "{{run}} train"),
                (f"{evaluation}{{{RUN}}}", f"{{{{run}}}} eval {{{{{dataset}}}}}"),
            ],
            "percentunit",
            "Training accuracy per step and held-out avg@k.",
        ),
        (
            "Token entropy percentiles",
            [(f"{entropy}{{{RUN}}}", f"{{{{run}}}} p{{{{{quantile}}}}}")],
            "short",
            "Entropy (nats) of response tokens at several percentiles.",
        ),
        (
            "Forking threshold and selected tokens",
            [
                (f"{_gauge('forking/threshold')}{{{RUN}}}", "{{run}} threshold (nats)"),
                (f"{_gauge('forking/selected_frac')}{{{RUN}}}", "{{run}} selected ratio"),
            ],
            "short",
            "Entropy threshold of the top-rho mask and the fraction of tokens that get gradient.",
        ),
        (
            "Clip fractions",
            [(f"{clip}{{{RUN}}}", f"{{{{run}}}} {{{{{clip_type}}}}}")],
            "percentunit",
            "Fraction of tokens whose gradient a clip removed, per token type.",
        ),
        (
            "KL",
            [
                (f"{kl}{{{RUN}}}", f"{{{{run}}}} ref {{{{{kl_type}}}}}"),
                (f"{_gauge('mismatch/kl_k3')}{{{RUN}}}", "{{run}} rollout vs learner"),
            ],
            "short",
            "KL to the reference policy per token type, and the train-inference mismatch.",
        ),
        (
            "Phase times",
            [(f"{phase_seconds}{{{RUN}}}", f"{{{{run}}}} {{{{{phase}}}}}")],
            "s",
            "Wall time of each phase of the last step.",
        ),
        (
            "Step duration p50 / p95",
            [
                (
                    f"histogram_quantile(0.5, sum by (le, run) ({STEP_SECONDS}))",
                    "{{run}} p50",
                ),
                (
                    f"histogram_quantile(0.95, sum by (le, run) ({STEP_SECONDS}))",
                    "{{run}} p95",
                ),
            ],
            "s",
            "RL step wall time.",
        ),
        (
            "Throughput",
            [(f"{_gauge('tokens_per_second')}{{{RUN}}}", "{{run}} tokens/s")],
            "short",
            "Generated tokens per second.",
        ),
        (
            "Weights",
            [
                (f"{_gauge('weight_version')}{{{RUN}}}", "{{run}} version"),
                (f"{_gauge('weight_version_lag/max')}{{{RUN}}}", "{{run}} max lag"),
            ],
            "short",
            "Policy weight version and the largest version lag of a sample.",
        ),
        (
            "Loss and gradient norm",
            [(f"{_gauge('loss')}{{{RUN}}}", "{{run}} loss"), (f"{_gauge('grad_norm')}{{{RUN}}}", "{{run}} grad norm")],
            "short",
            "",
        ),
        (
            "Response length",
            [(f"{_gauge('response_length/mean')}{{{RUN}}}", "{{run}}")],
            "short",
            "Mean response length in tokens.",
        ),
    ]
    return [
        _panel(i + 1, title, targets, (i % 2) * 12, (i // 2) * 8, unit, description)
        for i, (title, targets, unit, description) in enumerate(specs)
    ]


def dashboard() -> dict[str, Any]:
    return {
        "uid": "forkrl-run",
        "title": "forkrl run",
        "tags": ["forkrl"],
        "timezone": "browser",
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
                {
                    "name": "run",
                    "type": "query",
                    "label": "Run",
                    "multi": True,
                    "includeAll": True,
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": {"query": f"label_values({_gauge('step')}, run)", "refId": "runs"},
                    "refresh": 2,
                },
            ]
        },
        "panels": panels(),
    }


def dashboard_json() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"
