"""The charts: `forkrl` (operator, CRDs, RBAC, monitoring, dashboard) and `rlvrjob` (one experiment from
values, validated by the generated values.schema.json), rendered with helm and installed against the
real API server."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.cluster.controlplane import ControlPlane, KubectlError
from tests.monitoring.exported import exported_series
from tests.operator.harness import CHART, OPERATOR_NAMESPACE, REPO, get_job

JOB_CHART = REPO / "helm" / "rlvrjob"


def render(cluster: ControlPlane, chart: Any, *args: str) -> dict[tuple[str, str], dict[str, Any]]:
    docs = yaml.safe_load_all(cluster.helm("template", "demo", str(chart), *args).stdout)
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs if doc}


def test_operator_chart_runs_one_recreated_replica_as_its_service_account(forkrl_cluster: ControlPlane) -> None:
    objects = render(forkrl_cluster, CHART)
    assert set(objects) == {
        ("CustomResourceDefinition", "rlvrjobs.forkrl.dev"),  # crds.manage (see test_crd_upgrade.py)
        ("ServiceAccount", "demo-forkrl"),
        ("ClusterRole", "demo-forkrl"),
        ("ClusterRoleBinding", "demo-forkrl"),
        ("Deployment", "demo-forkrl"),
        ("Service", "demo-forkrl-metrics"),
        ("ConfigMap", "demo-forkrl-dashboards"),
    }
    deployment = objects[("Deployment", "demo-forkrl")]["spec"]
    assert deployment["replicas"] == 1 and deployment["strategy"] == {"type": "Recreate"}
    pod = deployment["template"]["spec"]
    assert pod["serviceAccountName"] == "demo-forkrl"
    container = pod["containers"][0]
    assert container["command"] == ["python", "-m", "forkrl.operator"]
    assert "--standalone" in container["args"] and container["image"] == "ghcr.io/forkrl/forkrl:0.1.0"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    binding = objects[("ClusterRoleBinding", "demo-forkrl")]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "demo-forkrl", "namespace": "default"}]


def test_operator_extra_env_and_volumes_reach_the_pod(forkrl_cluster: ControlPlane) -> None:
    env = [{"name": "HTTPS_PROXY", "value": "http://proxy.internal:3128"}]
    volumes = [{"name": "ca", "configMap": {"name": "corp-ca"}}]
    mounts = [{"name": "ca", "mountPath": "/etc/ssl/corp", "readOnly": True}]
    objects = render(
        forkrl_cluster, CHART, "--set-json", f"operator.extraEnv={json.dumps(env)}",
        "--set-json", f"operator.extraVolumes={json.dumps(volumes)}",
        "--set-json", f"operator.extraVolumeMounts={json.dumps(mounts)}",
    )
    pod = objects[("Deployment", "demo-forkrl")]["spec"]["template"]["spec"]
    assert pod["volumes"] == volumes
    container = pod["containers"][0]
    assert container["env"][0]["name"] == "POD_ID" and container["env"][1:] == env
    assert container["volumeMounts"] == mounts
    plain = render(forkrl_cluster, CHART)[("Deployment", "demo-forkrl")]["spec"]["template"]["spec"]
    assert "volumes" not in plain and "volumeMounts" not in plain["containers"][0]


def test_more_replicas_need_peering(forkrl_cluster: ControlPlane) -> None:
    refused = forkrl_cluster.helm("template", "demo", str(CHART), "--set", "operator.replicas=2", check=False)
    assert refused.returncode != 0 and "needs peering.enabled" in refused.stderr
    objects = render(forkrl_cluster, CHART, "--set", "operator.replicas=2", "--set", "peering.enabled=true")
    args = objects[("Deployment", "demo-forkrl")]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--peering=forkrl" in args and "--standalone" not in args and not any("--priority" in a for a in args)
    assert ("ClusterKopfPeering", "forkrl") in objects


def test_monitoring_objects_are_gated_on_values(forkrl_cluster: ControlPlane) -> None:
    plain = render(forkrl_cluster, CHART)
    assert not {kind for kind, _ in plain} & {"ServiceMonitor", "PodMonitor"}
    monitored = render(
        forkrl_cluster,
        CHART,
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.podMonitor.enabled=true",
        "--set",
        "operator.watchNamespaces={team-a}",
    )
    assert monitored[("ServiceMonitor", "demo-forkrl")]["spec"]["endpoints"][0]["port"] == "metrics"
    pod_monitor = monitored[("PodMonitor", "demo-forkrl")]["spec"]
    assert pod_monitor["namespaceSelector"] == {"matchNames": ["team-a"]}
    assert pod_monitor["jobLabel"] == "forkrl.dev/job"  # series of a job's pods carry job=<RLVRJob name>
    assert [e["port"] for e in pod_monitor["podMetricsEndpoints"]] == ["metrics", "http"]
    no_dashboard = render(forkrl_cluster, CHART, "--set", "grafanaDashboard.enabled=false")
    assert ("ConfigMap", "demo-forkrl-dashboards") not in no_dashboard


def test_dashboards_chart_metrics_the_components_export(forkrl_cluster: ControlPlane) -> None:
    config_map = render(forkrl_cluster, CHART)[("ConfigMap", "demo-forkrl-dashboards")]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboards = {key: json.loads(text) for key, text in config_map["data"].items()}
    assert set(dashboards) == {"forkrl-experiment.json", "forkrl-services.json"}
    titles = [panel["title"] for dashboard in dashboards.values() for panel in dashboard["panels"]]
    for wanted in (
        "Reward",
        "Accuracy",
        "Token entropy percentiles",
        "Forking threshold",
        "Clip fraction by token type",
        "KL by token type",
        "Step time by phase",
        "Rollout queue",
        "Verifier item latency",
        "Reconciles by outcome",
        "Learner peak memory",
    ):
        assert wanted in titles
    # What the controller, a rollout replica, a verifier and the operator really export once they have worked
    # (tests/monitoring/test_dashboards.py also checks labels, legends and that promtool parses each query).
    exported = set(exported_series())
    used = {
        word
        for dashboard in dashboards.values()
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for word in _metric_names(target["expr"])
    }
    assert used and used <= exported, used - exported
    assert {name.split("_")[1] for name in used} == {"trainer", "learner", "rollout", "verifier", "operator"}


def _metric_names(expr: str) -> set[str]:
    import re

    return set(re.findall(r"forkrl_[a-z_]+", expr))


def test_the_operator_chart_is_installed_with_its_crds(forkrl_cluster: ControlPlane) -> None:
    releases = json.loads(forkrl_cluster.helm("list", "-n", OPERATOR_NAMESPACE, "-o", "json").stdout)
    assert [(r["name"], r["status"]) for r in releases] == [("forkrl", "deployed")]
    crd = forkrl_cluster.kubectl_json("get", "crd", "rlvrjobs.forkrl.dev")
    assert crd["spec"]["versions"][0]["name"] == "v1alpha1"
    assert (
        forkrl_cluster.kubectl_json("get", "deployment", "forkrl", "-n", OPERATOR_NAMESPACE)["spec"]["strategy"]["type"]
        == "Recreate"
    )


def test_job_chart_renders_the_values_as_the_spec(forkrl_cluster: ControlPlane) -> None:
    # helm's --set keeps floats as strings; --set-json passes real numbers.
    objects = render(
        forkrl_cluster,
        JOB_CHART,
        "--set-json",
        'objective={"name": "archer", "rho": 0.75}',
        "--set",
        "metadata.labels.team=rl",
    )
    job = objects[("RLVRJob", "demo")]
    assert job["apiVersion"] == "forkrl.dev/v1alpha1" and job["metadata"]["labels"]["team"] == "rl"
    assert job["spec"]["objective"] == {"name": "archer", "rho": 0.75}
    assert job["spec"]["model"] == {"path": "/models/Qwen2.5-Math-1.5B"}
    assert "metadata" not in job["spec"] and "global" not in job["spec"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set", "objective.name=ppo"], "objective"),
        (["--set", "schedule.steps=0"], "schedule/steps"),
        (["--set", "typo_field=1"], "typo_field"),
    ],
)
def test_job_chart_schema_rejects_bad_values(forkrl_cluster: ControlPlane, values: list[str], message: str) -> None:
    refused = forkrl_cluster.helm("template", "demo", str(JOB_CHART), *values, check=False)
    assert refused.returncode != 0 and "values don't meet the specifications of the schema" in refused.stderr
    assert message in refused.stderr


def test_job_chart_installs_and_the_api_server_checks_cross_field_rules(
    forkrl_cluster: ControlPlane, k8s_namespace: str
) -> None:
    cluster, ns = forkrl_cluster, k8s_namespace
    cluster.helm("install", "exp", str(JOB_CHART), "-n", ns, "--set", "cluster.verifier.replicas=2", "--wait")
    job = get_job(cluster, ns, "exp")
    assert job["spec"]["cluster"]["verifier"]["replicas"] == 2
    assert job["spec"]["schedule"]["steps"] == 10  # a spec default, filled in by the API server
    with pytest.raises(KubectlError, match=r"spec\.resources\.learner_ranks.*tensor_parallel x pipeline_parallel"):
        cluster.helm("install", "bad", str(JOB_CHART), "-n", ns, "--set", "learner.parallel.tensor_parallel=3")
    cluster.helm("uninstall", "exp", "-n", ns, "--wait")
    assert cluster.kubectl("get", "rlvr", "exp", "-n", ns, check=False).returncode != 0
