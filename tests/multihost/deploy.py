"""Place a forkrl run on simulated hosts: the verifier and each rollout replica on hosts of their own (as
Deployments would be), learner ranks on Ray worker nodes, the controller as the Ray driver on the head.

Every service binds its host's address; the controller is told where they are only through the spec
(`verifier.endpoint`, `rollout.endpoints`), exactly as on a cluster. Files (the model, checkpoints,
run directory) live on the machine's one filesystem, which plays the shared volume (PVC) role.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from forkrl.trainer.controller.recorder import read_records
from forkrl.trainer.controller.services import rollout_replica_argv, verifier_argv, verifier_config
from forkrl.trainer.spec import RLVRJobSpec
from tests.multihost.netns import Host
from tests.multihost.ray_cluster import RayCluster, driver_env, node_env

SERVICE_PORT = 8000
REPO = Path(__file__).resolve().parents[2]


def wait_http(host: Host, url: str, timeout_s: float = 180.0, process: subprocess.Popen | None = None,
              log: Path | None = None) -> None:
    """Poll `url` from inside `host` until it answers 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise RuntimeError(f"{url}: the service exited with {process.returncode}\n{tail}")
        result = host.run(["curl", "-sf", "-m", "3", "-o", "/dev/null", url], check=False, timeout=30)
        if result.returncode == 0:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy from {host.name} after {timeout_s}s")


@dataclass
class Service:
    """A service process started on a host, not necessarily answering yet (`ready` waits for it)."""

    host: Host
    url: str
    process: subprocess.Popen
    log: Path

    def ready(self) -> Service:
        wait_http(self.host, f"{self.url}/healthz", process=self.process, log=self.log)
        return self


def spawn_verifier(host: Host, spec: RLVRJobSpec, root: Path) -> Service:
    config = root / f"verifier-{host.name}.json"
    config.write_text(json.dumps(verifier_config(spec)))
    log = root / f"verifier-{host.name}.log"
    process = host.popen(verifier_argv(config, host.address, SERVICE_PORT, spec.verifier.workers), log,
                         env=node_env())
    return Service(host, f"http://{host.address}:{SERVICE_PORT}", process, log)


def spawn_replica(host: Host, spec: RLVRJobSpec, model_path: str, index: int, root: Path,
                  port: int = SERVICE_PORT) -> Service:
    """Rollout replica `index` of `spec` on `host` (its own session), started but maybe not answering yet."""
    log = root / f"rollout-{index}-{host.name}-{port}.log"
    process = host.popen(rollout_replica_argv(spec, model_path, host.address, port, index), log, env=node_env())
    return Service(host, f"http://{host.address}:{port}", process, log)


def start_verifier(host: Host, spec: RLVRJobSpec, root: Path) -> str:
    return spawn_verifier(host, spec, root).ready().url


def start_replica(host: Host, spec: RLVRJobSpec, model_path: str, index: int, root: Path) -> str:
    return spawn_replica(host, spec, model_path, index, root).ready().url


def stop(process: subprocess.Popen) -> None:
    """SIGKILL a service started with `Host.popen` and everything in its session, by its PID."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def write_spec(spec: RLVRJobSpec, path: Path) -> Path:
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    return path


@dataclass
class ControllerRun:
    """A `forkrl train` process on the head host, driving the cluster."""

    spec: RLVRJobSpec
    process: subprocess.Popen
    log: Path
    started: float = field(default_factory=time.monotonic)

    def wait(self, timeout_s: float) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise TimeoutError(f"forkrl train still running after {timeout_s}s:\n{self.tail()}") from None

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    def train_records(self) -> list[dict]:
        path = self.spec.run_dir() / "metrics.jsonl"
        return read_records(path, "train") if path.exists() else []


def run_controller(head: Host, cluster: RayCluster, spec_path: Path, spec: RLVRJobSpec, log: Path,
                   resume: bool = False) -> ControllerRun:
    argv = [str(Path(sys.executable).with_name("forkrl")), "train", str(spec_path), "--quiet"]
    if resume:
        argv.append("--resume")
    process = head.popen(argv, log, env=driver_env(cluster), cwd=str(REPO))
    return ControllerRun(spec, process, log)
