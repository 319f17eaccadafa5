"""The controller's progress reaches the operator through the `<job>-status` ConfigMap: patched for real
on the API server, read back with the operator's own parser."""

from __future__ import annotations

from forkrl.operator.status import parse_progress
from forkrl.trainer.controller.cluster_status import StatusReporter


def test_reporter_patches_the_status_configmap(control_plane, k8s_namespace, monkeypatch) -> None:
    from kubernetes import client

    api = client.CoreV1Api(control_plane.api_client())
    api.create_namespaced_config_map(k8s_namespace, {"metadata": {"name": "job-status"}, "data": {}})
    monkeypatch.setenv("FORKRL_STATUS_CONFIGMAP", "job-status")
    monkeypatch.setenv("FORKRL_NAMESPACE", k8s_namespace)
    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
    reporter = StatusReporter.from_env(log=lambda _: None)
    assert reporter is not None
    assert reporter.report(7, 7, reward=0.25, accuracy=0.5, checkpoint="/ckpt/step_00000005")
    data = api.read_namespaced_config_map("job-status", k8s_namespace).data
    progress, errors = parse_progress(data)
    assert errors == ()
    assert progress["step"] == 7 and progress["weightVersion"] == 7
    assert progress["reward"] == 0.25 and progress["accuracy"] == 0.5
    assert progress["checkpoint"] == "/ckpt/step_00000005" and progress["progressTime"].endswith("Z")


def test_reporter_failure_is_not_fatal(control_plane, k8s_namespace) -> None:
    from kubernetes import client

    messages: list[str] = []
    reporter = StatusReporter("missing", k8s_namespace, api=client.CoreV1Api(control_plane.api_client()),
                              log=messages.append)
    assert reporter.report(1, 1) is False
    assert messages and "not updated" in messages[0]


def test_no_reporter_outside_kubernetes(monkeypatch) -> None:
    monkeypatch.delenv("FORKRL_STATUS_CONFIGMAP", raising=False)
    assert StatusReporter.from_env() is None
