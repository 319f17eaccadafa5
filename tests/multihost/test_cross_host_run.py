"""The main job spread over six hosts, against the same spec on one host.

    h0  Ray head + the controller (Ray driver)        h3  rollout replica r0
    h1  Ray worker: learner ranks 0,1 (one TP pair)   h4  rollout replica r1
    h2  Ray worker: learner ranks 2,3 (the other)     h5  reward verifier

Every address the controller uses comes from the spec (`rollout.endpoints`, `verifier.endpoint`) or from
Ray (the learner ranks' node IPs); `127.0.0.1` on any of these hosts reaches only that host. The tests
of this module share the hosts and run in order; the last one kills a learner host.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file

from forkrl.operator.ray_job import RENDEZVOUS_PORT, WEIGHT_SYNC_PORT
from forkrl.rollout.network import RENDEZVOUS_PORT_ENV, WEIGHT_SYNC_PORT_ENV
from forkrl.trainer.spec import RLVRJobSpec
from tests.multihost.conftest import main_job
from tests.multihost.deploy import (
    REPO,
    ControllerRun,
    run_controller,
    spawn_replica,
    spawn_verifier,
    stop,
    write_spec,
)
from tests.multihost.forward import Forwarder
from tests.multihost.netns import Hosts
from tests.multihost.ray_cluster import RayCluster

# Each test brings up processes on six hosts of a 2-core machine; the first also builds the shared
# cold-start policy and the one-host reference run.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

STEPS = 3
# The fixed ports the operator gives learner pods (declared as containerPorts): exercised here too.
LEARNER_POD_ENV = {RENDEZVOUS_PORT_ENV: str(RENDEZVOUS_PORT), WEIGHT_SYNC_PORT_ENV: str(WEIGHT_SYNC_PORT)}
# Values that measure time or the run's topology, not what it computed.
_NOT_COMPARED = re.compile(r"time|second|tokens_per|replicas|/failures|^step$|sync/|memory")


def spec_for(name: str, root: Path, model_path: str, **changes: dict) -> RLVRJobSpec:
    """The main job at 4 learner ranks (TP=2 x DP=2), 3 steps, a checkpoint every step, no evaluation."""
    base: dict = {
        "name": name,
        "model": {"path": model_path, "tiny": None},
        "cold_start": {"enabled": False},
        "eval": {"datasets": []},
        "resources": {"learner_ranks": 4, "torch_threads": 1},
        "learner": {"parallel": {"tensor_parallel": 2}},
        # Half the main job's batch (same 2 updates per step): the comparison is as strict, the suite faster.
        "schedule": {"steps": STEPS, "train_batch_size": 16, "mini_batch_size": 8},
        "rollout": {"replicas": 2},
        "checkpoint": {"interval": 1, "keep_last": 5, "dir": str(root / name / "checkpoints")},
        "observability": {"run_dir": str(root / name), "progress": "lines", "report": False, "tensorboard": False},
    }
    for key, value in changes.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return main_job(base)


def computed_values(record: dict) -> dict:
    return {k: v for k, v in record.items() if not _NOT_COMPARED.search(k) and k not in ("kind", "time")}


def final_weights(spec: RLVRJobSpec) -> dict[str, torch.Tensor]:
    return load_file(str(spec.run_dir() / "final_model" / "model.safetensors"))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("multihost")


@pytest.fixture(scope="module")
def one_host_run(root: Path, cold_start_policy: str) -> RLVRJobSpec:
    """The reference: the same spec in embedded mode on this one host (local Ray, local services)."""
    spec = spec_for("one-host", root, cold_start_policy)
    path = write_spec(spec, root / "one-host.yaml")
    forkrl = str(Path(sys.executable).with_name("forkrl"))
    result = subprocess.run([forkrl, "train", str(path), "--quiet"], cwd=REPO, capture_output=True, text=True,
                            timeout=1500)
    assert result.returncode == 0, result.stderr[-4000:]
    return spec


@dataclass
class Cluster:
    hosts: Hosts
    ray: RayCluster
    replicas: list[str]
    verifier: str


@pytest.fixture(scope="module")
def cluster(harness: None, root: Path, cold_start_policy: str) -> Iterator[Cluster]:
    hosts = Hosts.create(6)
    ray = RayCluster(hosts[0], root / "ray")
    try:
        ray.start_head()
        ray.add_node(hosts[1], cpus=2, env=LEARNER_POD_ENV)
        ray.add_node(hosts[2], cpus=2, env=LEARNER_POD_ENV)
        template = spec_for("services", root, cold_start_policy)
        # The services start while the Ray nodes do, and each other (processes of their own, mostly importing):
        # waiting for each in turn would leave a core idle.
        services = [spawn_replica(hosts[3 + i], template, cold_start_policy, i, root) for i in range(2)]
        services.append(spawn_verifier(hosts[5], template, root))
        ray.wait_for_nodes(3)
        *replicas, verifier = [service.ready().url for service in services]
        yield Cluster(hosts, ray, replicas, verifier)
    finally:
        ray.stop()
        hosts.delete()


def across_hosts(name: str, root: Path, cluster: Cluster, model_path: str) -> RLVRJobSpec:
    return spec_for(name, root, model_path, rollout={"replicas": 0, "endpoints": cluster.replicas,
                                                     "connect_timeout_s": 3.0, "idle_timeout_s": 8.0},
                    verifier={"endpoint": cluster.verifier})


def start(cluster: Cluster, spec: RLVRJobSpec, root: Path, resume: bool = False) -> ControllerRun:
    path = write_spec(spec, root / f"{spec.name}.yaml")
    suffix = "-resume" if resume else ""
    return run_controller(cluster.hosts[0], cluster.ray, path, spec, root / f"{spec.name}{suffix}-controller.log",
                          resume=resume)


def test_pipeline_stages_on_two_hosts_each_sync_their_own_layers(root: Path, cluster: Cluster,
                                                                  two_layer_policy: str) -> None:
    # PP=2, one rank per learner host: stage 0 (layer 0, embeddings) on one host, stage 1 (layer 1, head)
    # on the other, each its own sender to a replica of the 2-layer model on a rollout host's port 8001
    # (one replica: fan-out to several is the other tests' subject).
    template = spec_for("pipeline", root, two_layer_policy)
    launched = [spawn_replica(cluster.hosts[3], template, two_layer_policy, 0, root, port=8001)]
    try:
        replicas = [service.ready().url for service in launched]
        spec = spec_for("pipeline", root, two_layer_policy, resources={"learner_ranks": 2, "cpus_per_learner": 2.0},
                        learner={"parallel": {"tensor_parallel": 1, "pipeline_parallel": 2}},
                        rollout={"replicas": 0, "endpoints": replicas}, verifier={"endpoint": cluster.verifier},
                        schedule={"steps": 2})
        run = start(cluster, spec, root)
        assert run.wait(timeout_s=1500) == 0, run.tail()
    finally:
        for service in launched:
            stop(service.process)
    log = run.tail(200_000)
    placed = dict(re.findall(r"(\d)@(198\.18\.0\.\d+)", re.search(r"learner ranks: (.*)", log).group(1)))
    assert placed["0"] != placed["1"], placed
    records = run.train_records()
    assert [r["sync/senders"] for r in records] == [2, 2]
    # The replica holds every layer of the new version, from both senders: its sampling log-probs of step 2
    # (generated with the weights synced after step 1) match the learner's own to float rounding.
    assert [r["weight_version"] for r in records] == [1, 2]
    assert any(r.get("trained/reward_mean", 0) > 0 for r in records), "no reward: weights would not move"
    assert abs(records[1]["learner/mismatch/k1"]) < 1e-4 and records[1]["learner/mismatch/k3"] < 1e-6, records[1]
    start_weights = load_file(str(Path(two_layer_policy) / "model.safetensors"))
    final = final_weights(spec)
    assert final.keys() == start_weights.keys()
    moved = {n.split(".")[2] for n, t in final.items() if n.startswith("model.layers.") and
             not torch.equal(start_weights[n], t)}
    assert moved == {"0", "1"}, f"layers updated (and synced): {moved}"


def run_records(spec: RLVRJobSpec) -> list[dict]:
    from forkrl.trainer.controller.recorder import read_records

    return read_records(spec.run_dir() / "metrics.jsonl", "train")


def _rollout_gauges(forwarder: Forwarder) -> dict[str, float]:
    text = httpx.get(f"{forwarder.url}/metrics", timeout=3).text
    values = {}
    for name in ("forkrl_rollout_running_requests", "forkrl_rollout_weight_version"):
        match = re.search(rf"^{name}{{[^}}]*}} ([0-9.e+-]+)$", text, re.MULTILINE)
        values[name] = float(match.group(1)) if match else math.nan
    return values


def test_rollout_host_cut_mid_step_fails_over_and_is_resynced_before_serving(
        root: Path, cluster: Cluster, cold_start_policy: str) -> None:
    spec = across_hosts("link-cut", root, cluster, cold_start_policy)
    spec = spec.model_copy(update={"schedule": spec.schedule.model_copy(update={"steps": 4})})
    victim = cluster.hosts[4]
    run = start(cluster, spec, root)
    cut_at = None
    with Forwarder(victim.namespace, victim.address, 8000) as forwarder:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and run.process.poll() is None:
            try:
                gauges = _rollout_gauges(forwarder)
            except httpx.HTTPError:
                gauges = {}
            # Generating with RL weights (version >= 1): the second step's rollout is running on the victim.
            if gauges.get("forkrl_rollout_weight_version", 0) >= 1 and gauges["forkrl_rollout_running_requests"] > 0:
                victim.cut_link()
                cut_at = len(run.train_records())
                break
            time.sleep(0.2)
    assert cut_at is not None, "never saw the victim generate after the first update:\n" + run.tail()
    try:
        while len(run.train_records()) <= cut_at and run.process.poll() is None:
            time.sleep(0.5)
    finally:
        victim.restore_link()
    assert run.wait(timeout_s=1200) == 0, run.tail()
    records = run.train_records()
    cut_step = records[cut_at]
    assert cut_step["replicas/failures_total"] >= 1 and cut_step["replicas/serving"] == 1, cut_step
    # The batch was still filled (dynamic sampling may generate more or fewer rounds per step, so the
    # generated count varies; the trained batch does not).
    assert cut_step["trained/samples"] == records[0]["trained/samples"], \
        "the failed share was not regenerated elsewhere"
    later = records[cut_at + 1:]
    assert later and later[-1]["replicas/serving"] == 2, [r["replicas/serving"] for r in records]
    log = run.tail(200_000)
    assert f"rollout replica {cluster.replicas[1]} answers again" in log
    back = log.index(f"rollout replica {cluster.replicas[1]} answers again")
    assert "re-pushing weights" in log[back:], "the restored replica served without being re-synced"
    assert later[-1]["replicas/repushed_total"] >= 1


def test_main_job_across_hosts_survives_a_lost_learner_host_and_equals_one_host(
        root: Path, cluster: Cluster, cold_start_policy: str, one_host_run: RLVRJobSpec) -> None:
    """The main job spread over hosts (controller, two learner hosts, two rollout hosts, a verifier host)
    loses a learner host after its first checkpoint: it stops with a clear error, resumes with a fresh host
    in its place, and ends with every computed value of every step and the final parameters bitwise equal
    to the one-host run's. (One run for both claims: each costs minutes on this 2-core machine.)"""
    spec = across_hosts("host-loss", root, cluster, cold_start_policy)
    run = start(cluster, spec, root)
    deadline = time.monotonic() + 900
    checkpoints = spec.checkpoint_dir()
    while time.monotonic() < deadline and run.process.poll() is None:
        if (checkpoints / "latest").exists() and len(run.train_records()) >= 1:
            break
        time.sleep(0.5)
    log = run.tail(200_000)
    # TP pairs on one host each, the two pairs on different hosts, rendezvous at rank 0's host address.
    placed = dict(re.findall(r"(\d)@(198\.18\.0\.\d+)", re.search(r"learner ranks: (.*)", log).group(1)))
    assert placed["0"] == placed["1"] and placed["2"] == placed["3"] and placed["0"] != placed["2"], placed
    assert set(placed.values()) == {cluster.hosts[1].address, cluster.hosts[2].address}
    assert f"rendezvous {placed['0']}:{RENDEZVOUS_PORT}" in log

    lost = cluster.hosts[2]
    cluster.ray.lose(lost)  # the learner host with ranks 2 and 3 disappears
    code = run.wait(timeout_s=600)
    assert code == 1, run.tail()
    tail = run.tail()
    assert re.search(r"forkrl train: learner rank [23] on node 198\.18\.0\.3 died", tail), tail
    assert "--resume" in tail

    fresh = cluster.hosts.add_host()
    cluster.ray.add_node(fresh, cpus=2, env=LEARNER_POD_ENV)
    cluster.ray.wait_for_nodes(3)  # head, h1, and the fresh host (h2 is dead)
    resumed = start(cluster, spec, root, resume=True)
    assert resumed.wait(timeout_s=1500) == 0, resumed.tail()
    assert f"@{fresh.address}" in resumed.tail(200_000)

    # The same computation: every computed value of every step, and the final parameters, bitwise. gloo
    # sums in the same order whatever the transport, every sample's seed comes from the spec, and the
    # resumed steps start from the checkpoint's exact state. A step redone after the loss counts once.
    by_step = {r["step"]: computed_values(r) for r in resumed.train_records()}
    reference = [computed_values(r) for r in run_records(one_host_run)]
    assert sorted(by_step) == list(range(1, STEPS + 1)) and len(reference) == STEPS, sorted(by_step)
    for step, want in enumerate(reference, start=1):
        got = by_step[step]
        assert got == want, f"step {step}: {[(k, want.get(k), got.get(k)) for k in want if got.get(k) != want[k]]}"
    assert any(r.get("trained/reward_mean", 0) > 0 for r in by_step.values()), "no reward: the test proves nothing"
    want_weights, got_weights = final_weights(one_host_run), final_weights(spec)
    assert want_weights.keys() == got_weights.keys()
    for name, tensor in want_weights.items():
        assert torch.equal(tensor, got_weights[name]), name
    start_weights = load_file(str(Path(cold_start_policy) / "model.safetensors"))
    assert any(not torch.equal(start_weights[n], t) for n, t in got_weights.items()), "RL left every weight as it was"
