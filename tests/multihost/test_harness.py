"""The harness itself: hosts are isolated the way machines are, links can be cut, crashed runs are
cleaned up, the test process can reach a host's service, and Ray runs as a real multi-node cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.multihost.deploy import wait_http
from tests.multihost.forward import Forwarder, connect_in
from tests.multihost.netns import PREFIX, cleanup_stale, list_namespaces, namespace_pids
from tests.multihost.ray_cluster import RayCluster, driver_env

SERVE = [sys.executable, "-m", "http.server", "--bind"]


def _curl(host, url: str) -> int:
    """curl's exit code from inside `host` (0 = answered, 7 = refused/unreachable, 28 = timed out)."""
    return host.run(["curl", "-s", "-m", "2", "-o", "/dev/null", url], check=False).returncode


def test_each_host_has_its_own_loopback_and_reaches_the_others_only_by_address(
        make_hosts, tmp_path: Path) -> None:
    hosts = make_hosts(3)
    assert [h.address for h in hosts] == ["198.18.0.1", "198.18.0.2", "198.18.0.3"]
    local_only = hosts[1].popen([*SERVE, "127.0.0.1", "8001"], tmp_path / "local.log")
    shared = hosts[1].popen([*SERVE, hosts[1].address, "8002"], tmp_path / "shared.log")
    wait_http(hosts[1], "http://127.0.0.1:8001/", process=local_only)
    wait_http(hosts[1], f"http://{hosts[1].address}:8002/", process=shared)
    assert _curl(hosts[0], "http://127.0.0.1:8001/") == 7          # h0's loopback is h0's
    assert _curl(hosts[0], f"http://{hosts[1].address}:8002/") == 0  # across the bridge
    assert _curl(hosts[2], f"http://{hosts[1].address}:8002/") == 0
    # No default route: anything outside the harness subnet is unreachable at once, nothing leaves.
    routes = hosts[0].run(["ip", "route"]).stdout
    assert "default" not in routes and "198.18.0.0/24 dev eth0" in routes
    assert _curl(hosts[0], "http://198.19.255.1:80/") == 7
    # A cut link drops packets (a timeout, not a refusal); restoring it brings the host back.
    hosts[1].cut_link()
    assert _curl(hosts[0], f"http://{hosts[1].address}:8002/") == 28
    hosts[1].restore_link()
    wait_http(hosts[0], f"http://{hosts[1].address}:8002/", timeout_s=30)


def test_the_test_process_reaches_a_host_through_a_forwarder(make_hosts, tmp_path: Path) -> None:
    hosts = make_hosts(1)
    server = hosts[0].popen([*SERVE, "127.0.0.1", "8003"], tmp_path / "http.log")
    wait_http(hosts[0], "http://127.0.0.1:8003/", process=server)
    with Forwarder(hosts[0].namespace, "127.0.0.1", 8003) as forwarder:
        assert httpx.get(forwarder.url + "/", timeout=5).status_code == 200
    with connect_in(hosts[0].namespace, "127.0.0.1", 8003) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert sock.recv(12).startswith(b"HTTP/1.0 200")


def test_killing_a_host_ends_everything_on_it_and_crashed_runs_are_cleaned_up(make_hosts, tmp_path: Path) -> None:
    hosts = make_hosts(2)
    sleeper = hosts[1].popen(["sleep", "600"], tmp_path / "sleep.log")
    assert sleeper.pid in namespace_pids(hosts[1].namespace) or namespace_pids(hosts[1].namespace)
    hosts[1].kill_all()
    assert namespace_pids(hosts[1].namespace) == [] and sleeper.poll() is not None

    # A run that died without cleaning up: namespaces named after a PID that no longer exists, with a
    # process still inside one of them.
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{PREFIX}{dead.pid}-h0"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    orphan = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "600"], start_new_session=True)
    time.sleep(0.3)
    removed = cleanup_stale()
    assert stale in removed and stale not in list_namespaces()
    assert orphan.wait(timeout=10) != 0
    assert all(h.namespace in list_namespaces() for h in hosts), "a live run's hosts must be left alone"


@pytest.mark.slow
def test_ray_nodes_on_two_hosts_form_one_cluster_and_actors_land_where_pinned(make_hosts, tmp_path: Path) -> None:
    hosts = make_hosts(2)
    cluster = RayCluster(hosts[0], tmp_path)
    try:
        cluster.start_head(cpus=1)
        cluster.add_node(hosts[1], cpus=1)
        nodes = cluster.wait_for_nodes(2)
        assert sorted(n["ip"] for n in nodes) == ["198.18.0.1", "198.18.0.2"]
        code = (
            "import os, ray\n"
            "ray.init(address=os.environ['RAY_ADDRESS'], log_to_driver=False)\n"
            "where = ray.remote(lambda: ray.util.get_node_ip_address())\n"
            "print(ray.util.get_node_ip_address(), *ray.get([where.options(resources={f'host{i}': 0.5}).remote()"
            " for i in (0, 1)]))\n"
        )
        result = hosts[0].run([sys.executable, "-c", code], env=driver_env(cluster), timeout=180)
        assert result.stdout.split()[-3:] == ["198.18.0.1", "198.18.0.1", "198.18.0.2"], result.stderr[-2000:]
    finally:
        cluster.stop()
    assert not os.path.exists(f"/tmp/{hosts[1].namespace}-ray")
