"""The control-plane fixture works for real: a stamped apiserver, kubectl round trips, CRD schema
validation, garbage collection, scheduling onto kwok GPU nodes, KubeRay, RBAC and helm."""

from __future__ import annotations

import ipaddress
import json
import os
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.cluster import components
from tests.cluster.binaries import ClusterBinaries, pinned_version
from tests.cluster.controlplane import ControlPlane, KubectlError
from tests.cluster.fixtures import KWOK_NODES
from tests.cluster.processes import ComponentError, ManagedProcess, wait_until

GPU_NODES = {name for name, gpus in KWOK_NODES if gpus}


def test_apiserver_and_kubectl_report_the_stamped_release(control_plane: ControlPlane) -> None:
    release = pinned_version("kube-apiserver", "k8s.io/kubernetes")
    major, minor = release.lstrip("v").split(".")[:2]
    server = control_plane.server_version()
    assert server["gitVersion"] == release
    assert (server["major"], server["minor"]) == (major, minor)
    versions = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert versions["clientVersion"]["gitVersion"] == release
    assert versions["serverVersion"]["gitVersion"] == release


def test_configmap_round_trips_through_kubectl_and_the_python_client(
    control_plane: ControlPlane, k8s_namespace: str
) -> None:
    data = {"plain": "value", "multi-line": "a: 1\nb: [2, 3]\n", "unicode": "entropie ≥ τ"}
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "round-trip", "namespace": k8s_namespace, "labels": {"app": "forkrl-test"}},
        "data": data,
    }
    control_plane.apply(configmap)
    fetched = control_plane.kubectl_json("get", "configmap", "round-trip", "-n", k8s_namespace)
    assert fetched["data"] == data
    assert fetched["metadata"]["labels"] == {"app": "forkrl-test"}

    configmap["data"] = {**data, "plain": "changed"}
    control_plane.apply(configmap)
    from kubernetes import client

    with control_plane.api_client() as api:
        read = client.CoreV1Api(api).read_namespaced_config_map("round-trip", k8s_namespace)
    assert read.data == {**data, "plain": "changed"}
    assert int(read.metadata.resource_version) > int(fetched["metadata"]["resourceVersion"])


WIDGET_CRD = textwrap.dedent(
    """
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata:
      name: widgets.test.forkrl.dev
    spec:
      group: test.forkrl.dev
      scope: Namespaced
      names: {plural: widgets, singular: widget, kind: Widget}
      versions:
      - name: v1
        served: true
        storage: true
        subresources: {status: {}}
        schema:
          openAPIV3Schema:
            type: object
            properties:
              spec:
                type: object
                required: [replicas]
                x-kubernetes-validations:
                - rule: "self.minReplicas <= self.replicas"
                  message: "minReplicas must not exceed replicas"
                properties:
                  replicas: {type: integer, minimum: 1, maximum: 8}
                  minReplicas: {type: integer, minimum: 0, default: 0}
                  mode: {type: string, enum: [forking, archer], default: forking}
              status:
                type: object
                x-kubernetes-preserve-unknown-fields: true
    """
)


def widget(namespace: str, name: str, spec: dict[str, object]) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "test.forkrl.dev/v1",
            "kind": "Widget",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


def test_kubectl_json_answers_a_plain_get_as_kubectl_does(control_plane: ControlPlane, k8s_namespace: str) -> None:
    """kubectl_json answers `get` through the REST API (no kubectl process); what it returns and how it fails
    must be kubectl's own: the same objects, kinds on list items, short and group-qualified names, the error."""
    ns = k8s_namespace
    control_plane.apply({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "c1", "namespace": ns, "labels": {"pick": "me"}}, "data": {"x": "1"}})

    def summary(answer: dict) -> object:
        if answer["kind"] == "List":
            return sorted((i["kind"], i["apiVersion"], i["metadata"]["name"]) for i in answer["items"])
        return answer["kind"], answer["apiVersion"], answer["metadata"]["name"], answer.get("data")

    for args in [("get", "configmap", "c1", "-n", ns), ("get", "cm", "-n", ns, "-l", "pick=me"),
                 ("get", "configmaps,serviceaccounts", f"--namespace={ns}"), ("get", "ns", ns),
                 ("get", "clusterroles.rbac.authorization.k8s.io", "admin"), ("get", "pods", "-A")]:
        via_kubectl = json.loads(control_plane.kubectl(*args, "-o", "json").stdout)
        assert summary(control_plane.kubectl_json(*args)) == summary(via_kubectl), args
    with pytest.raises(KubectlError, match=r'Error from server \(NotFound\): configmaps "nope" not found'):
        control_plane.kubectl_json("get", "configmap", "nope", "-n", ns)
    # A resource type discovery does not know goes to kubectl, which explains.
    with pytest.raises(KubectlError, match='the server doesn\'t have a resource type "gizmos"'):
        control_plane.kubectl_json("get", "gizmos")


def test_crd_defaults_prunes_and_rejects_by_schema(control_plane: ControlPlane, k8s_namespace: str) -> None:
    control_plane.apply(WIDGET_CRD)
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/widgets.test.forkrl.dev")

    with_unknown = widget(k8s_namespace, "good", {"replicas": 3, "unknownField": "dropped"})
    # kubectl asks for strict server-side field validation by default ...
    with pytest.raises(KubectlError, match=r'unknown field "spec\.unknownField"'):
        control_plane.apply(with_unknown)
    # ... without it the structural schema prunes the field, and the server fills in defaults.
    control_plane.apply(with_unknown, "--validate=ignore")
    good = control_plane.kubectl_json("get", "widget", "good", "-n", k8s_namespace)
    assert good["spec"] == {"replicas": 3, "minReplicas": 0, "mode": "forking"}

    with pytest.raises(KubectlError, match=r"spec\.replicas.*(less than or equal to 8|should be less)"):
        control_plane.apply(widget(k8s_namespace, "too-many", {"replicas": 9}))
    with pytest.raises(KubectlError, match=r"spec\.mode.*Unsupported value"):
        control_plane.apply(widget(k8s_namespace, "bad-mode", {"replicas": 2, "mode": "dapo"}))
    with pytest.raises(KubectlError, match="minReplicas must not exceed replicas"):
        control_plane.apply(widget(k8s_namespace, "bad-cel", {"replicas": 2, "minReplicas": 5}))
    names = control_plane.kubectl("get", "widgets", "-n", k8s_namespace, "-o", "name").stdout.split()
    assert names == ["widget.test.forkrl.dev/good"]


def test_garbage_collector_deletes_children_of_a_deleted_owner(control_plane: ControlPlane, k8s_namespace: str) -> None:
    ns = k8s_namespace
    control_plane.kubectl("create", "configmap", "owner", "-n", ns, "--from-literal=k=v")
    owner_uid = control_plane.kubectl_json("get", "configmap", "owner", "-n", ns)["metadata"]["uid"]
    owner_ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}
    children = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns, **extra}}
        for name, extra in (("child", {"ownerReferences": [owner_ref]}), ("bystander", {}))
    ]
    control_plane.apply(children)
    control_plane.kubectl("delete", "configmap", "owner", "-n", ns)

    def child_gone() -> bool:
        result = control_plane.kubectl("get", "configmap", "child", "-n", ns, check=False)
        return result.returncode != 0 and "NotFound" in result.stderr

    control_plane.wait_for(child_gone, "the garbage collector to delete the owned ConfigMap", timeout=60)
    # The unowned ConfigMap is still there: deletion followed the ownerReference, not the namespace.
    assert control_plane.kubectl_json("get", "configmap", "bystander", "-n", ns)["metadata"]["name"] == "bystander"


def gpu_pod(namespace: str, name: str, gpus: int) -> dict[str, object]:
    resources = {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "containers": [{"name": "main", "image": "forkrl/never-pulled:0", "resources": {"limits": resources}}]
        },
    }


def test_gpu_pod_is_scheduled_onto_a_kwok_gpu_node_and_runs(workload_cluster: ControlPlane, k8s_namespace: str) -> None:
    cluster, ns = workload_cluster, k8s_namespace
    gpu_nodes = cluster.kubectl_json("get", "nodes", "-l", "nvidia.com/gpu.present=true")["items"]
    assert {node["metadata"]["name"] for node in gpu_nodes} == GPU_NODES
    assert all(node["status"]["allocatable"]["nvidia.com/gpu"] == "8" for node in gpu_nodes)

    cluster.apply([gpu_pod(ns, "fits", gpus=4), gpu_pod(ns, "too-big", gpus=9)])
    cluster.kubectl("wait", "--for=condition=Ready", "--timeout=90s", "pod/fits", "-n", ns)
    pod = cluster.kubectl_json("get", "pod", "fits", "-n", ns)
    assert pod["status"]["phase"] == "Running"
    assert pod["spec"]["nodeName"] in GPU_NODES
    assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(components.POD_CIDR)

    # No node has 9 GPUs: the scheduler reports why and the pod stays Pending.
    def unschedulable() -> bool:
        status = cluster.kubectl_json("get", "pod", "too-big", "-n", ns)["status"]
        return any(
            c["type"] == "PodScheduled" and c["status"] == "False" and "nvidia.com/gpu" in c.get("message", "")
            for c in status.get("conditions", [])
        )

    cluster.wait_for(unschedulable, "the scheduler to report insufficient nvidia.com/gpu", timeout=60)
    assert cluster.kubectl_json("get", "pod", "too-big", "-n", ns)["status"]["phase"] == "Pending"


def test_endpoint_controllers_run_only_where_pod_addresses_can_be_published(tmp_path: Path) -> None:
    from tests.cluster.network import LOOPBACK, real_nodes_network
    from tests.cluster.pki import ClientCredentials

    client = ClientCredentials("admin", (), tmp_path / "c.pem", tmp_path / "k.pem")
    pki = components.PkiFiles(*(tmp_path / f"{index}.pem" for index in range(6)), client, tmp_path / "f.pem",
                              client, client)

    def controllers(network: object) -> set[str]:
        args = components.controller_manager_args(Path("kcm"), pki, tmp_path / "kc", 1, tmp_path, network)
        (flag,) = [arg for arg in args if arg.startswith("--controllers=")]
        return set(flag.removeprefix("--controllers=").split(","))

    # kwok pods have loopback addresses (Endpoints validation rejects them); real nodes' pods do not.
    assert ipaddress.ip_network(LOOPBACK.pod_cidr).is_loopback and not LOOPBACK.publish_endpoints
    assert controllers(LOOPBACK) == {"*", "-endpoint", "-endpointslice", "-endpointslicemirroring"}
    assert controllers(real_nodes_network("198.18.0.1")) == {"*"}


RAY_CLUSTER = """
apiVersion: ray.io/v1
kind: RayCluster
metadata:
  name: tiny
  namespace: {namespace}
spec:
  rayVersion: "2.46.0"
  headGroupSpec:
    rayStartParams: {{}}
    template:
      spec:
        containers:
        - name: ray-head
          image: rayproject/ray:2.46.0
          resources: {{limits: {{cpu: "1", memory: 2Gi}}}}
  workerGroupSpecs:
  - groupName: gpu
    replicas: 1
    minReplicas: 1
    maxReplicas: 1
    rayStartParams: {{}}
    template:
      spec:
        containers:
        - name: ray-worker
          image: rayproject/ray:2.46.0
          resources: {{limits: {{cpu: "1", memory: 2Gi, nvidia.com/gpu: "2"}}}}
"""


def test_kuberay_turns_a_raycluster_into_running_pods(kuberay_operator: ControlPlane, k8s_namespace: str) -> None:
    cluster, ns = kuberay_operator, k8s_namespace
    cluster.apply(RAY_CLUSTER.format(namespace=ns))
    raycluster_uid = cluster.kubectl_json("get", "raycluster", "tiny", "-n", ns)["metadata"]["uid"]

    def pods(node_type: str) -> list[dict]:
        selector = f"ray.io/cluster=tiny,ray.io/node-type={node_type}"
        return cluster.kubectl_json("get", "pods", "-n", ns, "-l", selector)["items"]

    cluster.wait_for(lambda: len(pods("head")) == 1 and len(pods("worker")) == 1, "KubeRay to create pods", 90)
    head, worker = pods("head")[0], pods("worker")[0]
    assert [ref["uid"] for ref in head["metadata"]["ownerReferences"]] == [raycluster_uid]
    assert worker["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    cluster.kubectl("wait", "--for=condition=Ready", "--timeout=90s", "pod", "-n", ns, "-l", "ray.io/cluster=tiny")
    assert cluster.kubectl_json("get", "pod", worker["metadata"]["name"], "-n", ns)["spec"]["nodeName"] in GPU_NODES
    # The head Service KubeRay creates for the dashboard/GCS.
    services = cluster.kubectl_json("get", "services", "-n", ns, "-l", "ray.io/cluster=tiny")["items"]
    assert any(svc["metadata"]["labels"].get("ray.io/node-type") == "head" for svc in services)
    cluster.wait_for(
        lambda: cluster.kubectl_json("get", "raycluster", "tiny", "-n", ns).get("status", {}).get("state") == "ready",
        "RayCluster status.state to become ready",
        90,
    )


def test_rbac_for_a_service_account_by_impersonation_and_by_token(
    control_plane: ControlPlane, k8s_namespace: str
) -> None:
    ns = k8s_namespace
    control_plane.kubectl("create", "serviceaccount", "reader", "-n", ns)
    control_plane.kubectl("create", "role", "pod-reader", "-n", ns, "--verb=get,list", "--resource=pods")
    control_plane.kubectl(
        "create", "rolebinding", "reader", "-n", ns, "--role=pod-reader", f"--serviceaccount={ns}:reader"
    )
    subject = f"system:serviceaccount:{ns}:reader"

    def can_i(*args: str) -> str:
        result = control_plane.kubectl("auth", "can-i", *args, f"--as={subject}", check=False)
        return result.stdout.strip()

    assert can_i("list", "pods", "-n", ns) == "yes"
    assert can_i("delete", "pods", "-n", ns) == "no"
    assert can_i("list", "pods", "-n", "default") == "no"
    assert can_i("list", "secrets", "-n", ns) == "no"

    # A real token signed with the service-account key authenticates as the same subject.
    kubeconfig = control_plane.service_account_kubeconfig(ns, "reader")
    as_reader = [f"--kubeconfig={kubeconfig}"]
    assert "client-certificate" not in kubeconfig.read_text()
    whoami = json.loads(control_plane.kubectl(*as_reader, "auth", "whoami", "-o", "json").stdout)
    assert whoami["status"]["userInfo"]["username"] == subject
    assert f"system:serviceaccounts:{ns}" in whoami["status"]["userInfo"]["groups"]
    assert control_plane.kubectl(*as_reader, "get", "pods", "-n", ns, check=False).returncode == 0
    denied = control_plane.kubectl(*as_reader, "get", "secrets", "-n", ns, check=False)
    assert denied.returncode != 0 and "Forbidden" in denied.stderr


def write_chart(root: Path, kube_version_constraint: str) -> Path:
    chart = root / "hello"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        f"apiVersion: v2\nname: hello\nversion: 0.1.0\nkubeVersion: '{kube_version_constraint}'\n"
    )
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "configmap.yaml").write_text(
        textwrap.dedent(
            """\
            apiVersion: v1
            kind: ConfigMap
            metadata:
              name: {{ .Release.Name }}-greeting
            data:
              greeting: {{ .Values.greeting | quote }}
              kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}
            """
        )
    )
    return chart


def test_helm_is_stamped_and_installs_a_chart(control_plane: ControlPlane, k8s_namespace: str, tmp_path: Path) -> None:
    ns = k8s_namespace
    assert control_plane.helm("version", "--template={{.Version}}").stdout.strip() == pinned_version(
        "helm", "helm.sh/helm/v3"
    )
    release = pinned_version("kube-apiserver", "k8s.io/kubernetes")
    minor = release.split(".")[1]
    chart = write_chart(tmp_path, f">=1.{minor}.0-0")

    rendered = list(
        yaml.safe_load_all(control_plane.helm("template", "demo", str(chart), "--set", "greeting=hi").stdout)
    )
    assert rendered[0]["metadata"]["name"] == "demo-greeting"
    assert rendered[0]["data"]["greeting"] == "hi"
    # Offline, helm assumes the Kubernetes minor stamped into it (unstamped it would say v1.20.0).
    assert rendered[0]["data"]["kubeVersion"] == f"v1.{minor}.0"

    # install reads the server version: the chart's kubeVersion constraint fails against v0.0.0.
    control_plane.helm("install", "demo", str(chart), "-n", ns, "--set", "greeting=hi", "--wait", "--timeout=60s")
    data = control_plane.kubectl_json("get", "configmap", "demo-greeting", "-n", ns)["data"]
    assert data == {"greeting": "hi", "kubeVersion": release}
    releases = json.loads(control_plane.helm("list", "-n", ns, "-o", "json").stdout)
    assert [(r["name"], r["status"]) for r in releases] == [("demo", "deployed")]

    too_new = write_chart(tmp_path / "newer", f">=1.{int(minor) + 1}.0-0")
    refused = control_plane.helm("install", "refused", str(too_new), "-n", ns, check=False)
    assert refused.returncode != 0 and "kubeVersion" in refused.stderr

    control_plane.helm("uninstall", "demo", "-n", ns, "--wait")
    gone = control_plane.kubectl("get", "configmap", "demo-greeting", "-n", ns, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr


def test_stop_ends_every_process_and_removes_the_workdir(k8s_binaries: ClusterBinaries) -> None:
    with ControlPlane(k8s_binaries).start(controller_manager=False) as cluster:
        pids = [process.pid for process in cluster.processes.values()]
        workdir = cluster.workdir
        assert set(cluster.processes) == {"etcd", "kube-apiserver"}
        assert cluster.kubectl("get", "--raw=/readyz").stdout.strip() == "ok"
    assert not workdir.exists()
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_component_that_dies_is_reported_with_its_log(k8s_binaries: ClusterBinaries, tmp_path: Path) -> None:
    process = ManagedProcess(
        "kube-apiserver", [str(k8s_binaries.path("kube-apiserver")), "--no-such-flag"], tmp_path / "apiserver.log"
    ).start()
    try:
        with pytest.raises(ComponentError, match=r"(?s)kube-apiserver exited.*unknown flag: --no-such-flag"):
            wait_until(lambda: False, "never", timeout=30, watched=[process])
    finally:
        process.stop()
