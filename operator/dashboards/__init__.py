"""forkrl's Grafana dashboards, built in code with grafana-foundation-sdk: `forkrl crd --write` writes each as
helm/forkrl/files/dashboards/<uid>.json, which the chart ships in a ConfigMap for Grafana's sidecar.

    experiment  reward, accuracy, entropy percentiles, the forking split, clip fraction and KL per token type,
                mismatch KL, step time by phase, tokens/s, weight-version lag
    services    rollout throughput and queue, verifier throughput, latency and sandbox kills, learner memory,
                operator reconciles and errors

Every panel queries metrics through their `MetricSpec`, so it names a metric some component declares;
tests/operator/test_helm.py and tests/monitoring/test_dashboards.py check the expressions against what the
real registries export and against promtool's PromQL parser.
"""

from __future__ import annotations

from pathlib import Path

DASHBOARD_DIR = Path("helm/forkrl/files/dashboards")


def dashboard_files() -> dict[Path, str]:
    """Generated dashboard JSON by path relative to the repository root (needs grafana-foundation-sdk)."""
    from forkrl.operator.dashboards.experiment import UID as EXPERIMENT
    from forkrl.operator.dashboards.experiment import experiment_dashboard
    from forkrl.operator.dashboards.services import UID as SERVICES
    from forkrl.operator.dashboards.services import services_dashboard

    return {
        DASHBOARD_DIR / f"{EXPERIMENT}.json": experiment_dashboard().json(),
        DASHBOARD_DIR / f"{SERVICES}.json": services_dashboard().json(),
    }
