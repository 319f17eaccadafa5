"""The services a local run starts itself: the reward verifier and the rollout replicas.

Each is a real process on this host's loopback (`python -m forkrl.rollout.verifier`,
`python -m forkrl.rollout`), so a crash, a kill or a restart behaves as on Kubernetes, where the same
clients reach Deployments through Services instead. The argv builders are shared with whatever starts
the same services on other hosts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from forkrl.rollout.control_token import CONTROL_TOKEN_ENV
from forkrl.rollout.lifeline import Lifeline
from forkrl.rollout.network import LOCAL_BIND_HOST
from forkrl.trainer.learner.launch import free_port
from forkrl.trainer.spec import RLVRJobSpec

# Embedded mode only: the services a local run starts itself listen on this host's loopback. Services on
# other hosts are reached through `verifier.endpoint` and `rollout.endpoints`.
LOCAL_HOST = LOCAL_BIND_HOST


class LocalProcess:
    """A service process with a health endpoint; `start` waits until it answers, `stop` drains it.

    The process leads its own session (signals for the terminal or the controller's group do not reach
    it; `stop` and `kill` signal its whole group) and holds a lifeline to this process: however this
    process ends, SIGKILL included, the service and everything in its group end with it. `start` and
    `restart` may be called from any thread, short-lived ones too (the lifeline is per process).
    """

    def __init__(self, name: str, argv: list[str], port: int, log_path: Path, env: dict[str, str] | None = None):
        self.name = name
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None
        self._lifeline: Lifeline | None = None
        self._lock = threading.RLock()  # start (a helper thread's restart) against stop/kill

    @property
    def url(self) -> str:
        return f"http://{LOCAL_HOST}:{self.port}"

    def start(self, timeout_s: float = 180.0) -> LocalProcess:
        """Spawn, then wait until healthy (`spawn` and `wait_healthy` apart let several start at once)."""
        return self.spawn().wait_healthy(timeout_s)

    def spawn(self) -> LocalProcess:
        """Start the process without waiting for it to answer."""
        with self._lock:
            if self.alive():
                raise RuntimeError(f"{self.name} is already running (pid {self.process.pid})")
            self._release()  # a previous process that ended by itself
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            lifeline = Lifeline()
            try:
                with self.log_path.open("ab") as log:
                    self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                                    env={**self.env, **lifeline.env}, pass_fds=lifeline.pass_fds,
                                                    start_new_session=True)
            except BaseException:
                lifeline.close()
                raise
            lifeline.release_child_end()
            self._lifeline = lifeline
        return self

    def wait_healthy(self, timeout_s: float = 180.0) -> LocalProcess:
        """Block until /healthz answers 200; a process that exits or stays silent is stopped and reported."""
        if self.process is None:
            raise RuntimeError(f"{self.name} was never spawned")
        deadline = time.monotonic() + timeout_s
        # One client for every poll: `httpx.get` would build a client, and with it an SSL context (tens
        # of ms of CPU), five times a second while the service starts on the same cores.
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    self._release()
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode} while starting; "
                                       f"log {self.log_path}:\n{self._log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/healthz").status_code == 200:
                        return self
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"{self.name} did not become healthy within {timeout_s:.0f}s; log {self.log_path}:\n"
                           f"{self._log_tail()}")

    def restart(self, timeout_s: float = 180.0) -> LocalProcess:
        """Kill and start again on the same port (a crashed pod coming back)."""
        self.kill()
        return self.start(timeout_s)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (fault injection, or a stop that timed out)."""
        try:
            if self.process is not None and self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        finally:
            self._release()

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (graceful drain), then SIGKILL after `timeout_s`."""
        if self.process is None or self.process.poll() is not None:
            self._release()
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        self._release()

    def _release(self) -> None:
        # Only once the process has ended (or must end now): closing the write end is what kills it.
        # Each start has its own pipe, so one left open would leak a descriptor per restart.
        with self._lock:
            if self._lifeline is not None:
                self._lifeline.close()
                self._lifeline = None

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def verifier_config(spec: RLVRJobSpec) -> dict:
    """The VerifierConfig fields of a run's verifier (math/code reward settings)."""
    return {"run": spec.name, "math": spec.verifier.math.model_dump(), "code": spec.verifier.code.model_dump()}


def verifier_argv(config_path: Path, host: str, port: int, workers: int | None = None) -> list[str]:
    """The command of a verifier service (a local process, or one a harness starts on another host)."""
    argv = [sys.executable, "-m", "forkrl.rollout.verifier", "--host", host, "--port", str(port),
            "--config", str(config_path), "--log-level", "warning"]
    return argv + (["--workers", str(workers)] if workers else [])


def start_verifier(config: dict, log_dir: Path, workers: int | None = None, wait: bool = True) -> LocalProcess:
    """A local verifier service with the given VerifierConfig fields, on this host's loopback (healthy,
    unless `wait` is false: then spawned only, and the caller calls `wait_healthy`).

    Its config file lives next to its log (a record of what it ran with): a restart after a kill reads it
    again, and nothing is left in the temp directory however the run ends.
    """
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    config_path = log_dir / "verifier.json"
    config_path.write_text(json.dumps(config))
    argv = verifier_argv(config_path, LOCAL_HOST, port, workers)
    process = LocalProcess("verifier", argv, port, log_dir / "verifier.log").spawn()
    return process.wait_healthy() if wait else process


def rollout_replica_argv(spec: RLVRJobSpec, model_path: str, host: str, port: int, index: int) -> list[str]:
    """The command of rollout replica `index` of a run: engine, seed and batching from the spec, so a
    replica started elsewhere (another host, a pod) behaves exactly like one forkrl starts itself; its
    metrics carry the run's name in `run`, as the operator's replicas do (the dashboards select by it)."""
    rollout = spec.rollout
    return [sys.executable, "-m", "forkrl.rollout", "--engine", rollout.engine, "--model", model_path,
            "--host", host, "--port", str(port), "--run", spec.name, "--replica", f"r{index}",
            "--seed", str(spec.seed), "--max-batch-size", str(rollout.max_batch_size),
            "--num-threads", str(rollout.torch_threads),
            "--in-flight-policy", "abort_retry" if rollout.in_flight_on_sync == "abort" else "finish"]


def start_rollout_replica(spec: RLVRJobSpec, model_path: str, log_dir: Path, index: int,
                          port: int | None = None, wait: bool = True, control_token: str | None = None) -> LocalProcess:
    """One local rollout server process serving `model_path` (weights version 0 until the first sync);
    healthy, unless `wait` is false (spawned only). `control_token` reaches it through its environment
    (never its command line, which any local user can read)."""
    port = port or free_port()
    argv = rollout_replica_argv(spec, model_path, LOCAL_HOST, port, index)
    env = {CONTROL_TOKEN_ENV: control_token} if control_token else None
    process = LocalProcess(f"rollout-{index}", argv, port, log_dir / f"rollout-{index}.log", env=env).spawn()
    return process.wait_healthy() if wait else process
