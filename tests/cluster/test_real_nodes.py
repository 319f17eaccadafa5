"""The real-node cluster itself: kubelets run containers, pods reach each other across nodes, Services
and the cluster DNS work, the apiserver reaches the kubelets, and the machine is left as it was."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from tests.cluster import host_state
from tests.cluster.host_state import HostState
from tests.cluster.real_cluster import RealCluster

pytestmark = pytest.mark.slow

# What the restricted Pod Security Standard demands of every pod and container.
RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def http_server_pod(cluster: RealCluster, name: str, namespace: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "securityContext": RESTRICTED_POD,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "web",
                    "image": cluster.base_image,
                    "imagePullPolicy": "Never",
                    # Serves the pod's own hostname, so a reply says which pod answered.
                    "command": ["sh", "-c", "mkdir -p /tmp/www && hostname > /tmp/www/index.html && "
                                "cd /tmp/www && exec python3 -m http.server 8000"],
                    "ports": [{"containerPort": 8000}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8000}, "periodSeconds": 1},
                    "securityContext": RESTRICTED_CONTAINER,
                }
            ],
        },
    }


def exec_python(cluster: RealCluster, namespace: str, pod: str, code: str) -> str:
    return cluster.kubectl("exec", "-n", namespace, pod, "--", "python3", "-c", code, timeout=60).stdout.strip()


def fetch(url: str) -> str:
    return f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=10).read().decode().strip())"


def test_nodes_are_real_kubelets_with_containerd(real_cluster: RealCluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in real_cluster.kubectl_json("get", "nodes")["items"]}
    assert set(nodes) == {"node-1", "node-2"}
    for name, node in nodes.items():
        info = node["status"]["nodeInfo"]
        assert info["containerRuntimeVersion"].startswith("containerd://")
        assert info["kubeletVersion"] == real_cluster.cp.server_version()["gitVersion"]
        addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
        assert addresses["InternalIP"] == real_cluster.node(name).host.address
        assert addresses["InternalIP"].startswith("198.18.0.")
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"


def test_pods_talk_across_nodes_through_services_and_dns(real_cluster: RealCluster, real_namespace: str) -> None:
    ns = real_namespace
    for name, node in (("web-1", "node-1"), ("web-2", "node-2")):
        real_cluster.cp.apply(http_server_pod(real_cluster, name, ns, node))
    real_cluster.kubectl("wait", "-n", ns, "--for=condition=Ready", "pod/web-1", "pod/web-2", "--timeout=120s",
                         timeout=150)
    pods = {p["metadata"]["name"]: p for p in real_cluster.kubectl_json("get", "pods", "-n", ns)["items"]}
    assert pods["web-1"]["spec"]["nodeName"] == "node-1" and pods["web-2"]["spec"]["nodeName"] == "node-2"
    ip2 = pods["web-2"]["status"]["podIP"]
    assert ip2.startswith("198.18.130.")  # node-2's pod range (network.node_pod_cidr(2))
    # Pod to pod across nodes, by pod IP.
    assert exec_python(real_cluster, ns, "web-1", fetch(f"http://{ip2}:8000/")) == "web-2"
    # A ClusterIP Service (kube-proxy's rules on node-1) and its DNS name (the cluster DNS).
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"selector": {"app": "web-2"}, "ports": [{"port": 80, "targetPort": 8000}]},
    }
    real_cluster.cp.apply(service)
    cluster_ip = real_cluster.kubectl_json("get", "service", "web", "-n", ns)["spec"]["clusterIP"]
    assert cluster_ip.startswith("198.19.0.")
    name = f"web.{ns}.svc.cluster.local"
    resolve = f"import socket; print(socket.gethostbyname({name!r}))"
    real_cluster.cp.wait_for(lambda: _try(lambda: exec_python(real_cluster, ns, "web-1", resolve)) == cluster_ip,
                             f"{name} resolving to {cluster_ip}", timeout=60)
    real_cluster.cp.wait_for(lambda: _try(lambda: exec_python(real_cluster, ns, "web-1", fetch(f"http://{name}/")))
                             == "web-2", "the Service answering from node-1", timeout=60)
    # The `kubernetes` Service reaches the apiserver (what in-cluster clients use).
    code = "import os, socket; socket.create_connection((os.environ['KUBERNETES_SERVICE_HOST'], 443), 5); print('ok')"
    assert exec_python(real_cluster, ns, "web-2", code) == "ok"
    # Logs come from the kubelet (apiserver -> kubelet on the node's address).
    logs = real_cluster.kubectl("logs", "-n", ns, "web-2").stdout
    assert '"GET / HTTP/1.1" 200' in logs


def test_restricted_namespace_rejects_a_root_pod(real_cluster: RealCluster, real_namespace: str) -> None:
    pod = http_server_pod(real_cluster, "root", real_namespace, "node-1")
    del pod["spec"]["securityContext"]
    result = subprocess.run(
        [str(real_cluster.cp.binaries.path("kubectl")), "apply", "-f", "-"],
        input=json.dumps(pod), capture_output=True, text=True, env=real_cluster.cp.env, check=False, timeout=60,
    )
    assert result.returncode != 0 and 'violates PodSecurity "restricted' in result.stderr


def _try(fn: Any) -> Any:
    try:
        return fn()
    except Exception:
        return None


# ----------------------------------------------------------------- the machine's own settings
def test_host_state_restores_what_it_recorded(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    if os.geteuid() != 0:
        pytest.skip("writing kernel settings needs root")
    monkeypatch.setattr(host_state, "STATE_DIR", tmp_path)
    before = host_state.read_sysctl("vm.overcommit_memory")
    state = HostState.record()
    assert state.path.exists() and json.loads(state.path.read_text())["sysctls"]["vm.overcommit_memory"] == before
    changed = "1" if before != "1" else "0"
    try:
        host_state._sysctl_path("vm.overcommit_memory").write_text(changed)
        assert state.changed() == {"vm.overcommit_memory": (before, changed)}
    finally:
        state.restore()
    assert host_state.read_sysctl("vm.overcommit_memory") == before
    assert not state.path.exists()


def test_a_crashed_runs_settings_are_restored_by_the_next_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    if os.geteuid() != 0:
        pytest.skip("writing kernel settings needs root")
    monkeypatch.setattr(host_state, "STATE_DIR", tmp_path)
    before = host_state.read_sysctl("kernel.panic")
    dead = subprocess.Popen(["true"])
    dead.wait()  # a PID that existed and is gone: the "crashed" run
    crashed = HostState(owner_pid=dead.pid, sysctls={"kernel.panic": before}, kubelet_dir_existed=True)
    crashed.path.write_text(json.dumps(crashed.__dict__))
    try:
        host_state._sysctl_path("kernel.panic").write_text("10")  # what a kubelet sets
        assert f"host settings of run {dead.pid}" in host_state.restore_stale()
        assert host_state.read_sysctl("kernel.panic") == before
        assert not crashed.path.exists()
    finally:
        host_state._sysctl_path("kernel.panic").write_text(before)
