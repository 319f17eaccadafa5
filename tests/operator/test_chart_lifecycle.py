"""The `forkrl` chart's lifecycle values: the operator's finalizer."""

from __future__ import annotations

from typing import Any

import yaml

from tests.cluster.controlplane import ControlPlane
from tests.operator.harness import CHART


def render(cluster: ControlPlane, *values: str) -> dict[tuple[str, str], dict[str, Any]]:
    docs = yaml.safe_load_all(cluster.helm("template", "demo", str(CHART), *values).stdout)
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs if doc}


def test_the_finalizer_can_be_turned_off_for_a_standalone_operator(forkrl_cluster: ControlPlane) -> None:
    def args(*values: str) -> list[str]:
        deployment = render(forkrl_cluster, *values)[("Deployment", "demo-forkrl")]
        return deployment["spec"]["template"]["spec"]["containers"][0]["args"]

    assert "--no-finalizer" not in args()
    assert "--no-finalizer" in args("--set", "operator.finalizer=false")
    values = ("--set", "operator.finalizer=false", "--set", "peering.enabled=true")
    refused = forkrl_cluster.helm("template", "demo", str(CHART), *values, check=False)
    assert refused.returncode != 0 and "operator.finalizer=false needs peering.enabled=false" in refused.stderr
