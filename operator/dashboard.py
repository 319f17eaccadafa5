"""The Grafana dashboard of a forkrl run, built from the controller's metric table so every panel names
a metric the controller exports (`forkrl crd --write` writes helm/forkrl/files/grafana-dashboard.json).
"""

from __future__ import annotations

import json
from typing import Any

from forkrl.trainer.metrics import prometheus as m

RUN = 'run=~"$run"'
STEP_SECONDS = f"rate({m.STEP_DURATION.name}_bucket{{{RUN}}}[10m])"


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
    entropy, quantile = m.ENTROPY.name, "quantile"
    clip, clip_type = m.CLIP_RATIO.name, "token_type"
    kl, kl_type = m.KL.name, "token_type"
    phase_seconds, phase = m.PHASE_SECONDS.name, "phase"
    evaluation, dataset = m.EVAL_ACCURACY.name, "dataset"
    specs: list[tuple[str, list[tuple[str, str]], str, str]] = [
        ("Reward", [(f"{m.REWARD.name}{{{RUN}}}", "{{run}}")], "short",
         "Mean verifier reward of the step's generated samples."),
        (
            "Accuracy",
            [
                (f"{m.ACCURACY.name}{{{RUN}}}", "{{run}} train"),
                (f"{evaluation}{{{RUN}}}", f"{{{{run}}}} eval {{{{{dataset}}}}}"),
            ],
            "percentunit",
            "Accuracy of the generated samples per step (before dynamic sampling) and held-out avg@k.",
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
                (f"{m.FORKING_THRESHOLD.name}{{{RUN}}}", "{{run}} threshold (nats)"),
                (f"{m.SELECTED_RATIO.name}{{{RUN}}}", "{{run}} selected ratio"),
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
                (f"{m.MISMATCH_KL.name}{{{RUN}}}", "{{run}} rollout vs learner"),
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
            [(f"{m.GENERATION_TPS.name}{{{RUN}}}", "{{run}} tokens/s")],
            "short",
            "Generated tokens per second.",
        ),
        (
            "Weights",
            [
                (f"{m.WEIGHT_VERSION.name}{{{RUN}}}", "{{run}} version"),
                (f"{m.WEIGHT_LAG.name}{{{RUN}}}", "{{run}} max lag"),
            ],
            "short",
            "Policy weight version and the largest version lag of a sample.",
        ),
        (
            "Loss and gradient norm",
            [(f"{m.LOSS.name}{{{RUN}}}", "{{run}} loss"), (f"{m.GRAD_NORM.name}{{{RUN}}}", "{{run}} grad norm")],
            "short",
            "",
        ),
        (
            "Response length",
            [(f"{m.RESPONSE_LENGTH.name}{{{RUN}}}", "{{run}}")],
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
                    "query": {"query": f"label_values({m.STEP.name}, run)", "refId": "runs"},
                    "refresh": 2,
                },
            ]
        },
        "panels": panels(),
    }


def dashboard_json() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"
