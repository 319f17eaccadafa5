"""A run's processes: the verifier and rollout replicas (started here on this host's loopback unless the
spec names endpoints on other hosts), the learner ranks (Ray actors on whatever nodes the Ray cluster
has), and the controller that drives them. `LocalRun` starts and stops what it started."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from forkrl.rollout.control_token import CONTROL_TOKEN_ENV, control_token_from_env, new_control_token
from forkrl.rollout.network import LOCAL_BIND_HOST
from forkrl.trainer.controller.replica_pool import ReplicaPool
from forkrl.trainer.controller.services import (
    LocalProcess,
    start_rollout_replica,
    start_verifier,
    verifier_config,
)
from forkrl.trainer.controller.step import RLVRController
from forkrl.trainer.controller.weight_push import WeightPusher
from forkrl.trainer.data.schema import PromptRow
from forkrl.trainer.data.stream import PromptStream
from forkrl.trainer.spec import RLVRJobSpec

if TYPE_CHECKING:  # imported when the run starts: Ray and the verifier client are heavy
    from forkrl.rollout.verifier.client import VerifierClient
    from forkrl.trainer.controller.learner_group import LearnerGroup
    from forkrl.trainer.controller.protocols import Tokenizer


def run_control_token(spec: RLVRJobSpec, log: Callable[[str], None]) -> str | None:
    """The job's control token: FORKRL_CONTROL_TOKEN (the operator sets it from the job's Secret), else a new
    one when every replica is started here; replicas at `rollout.endpoints` were started with whatever
    token their starter gave them, so without the variable there is none to prove."""
    token = control_token_from_env()
    if token is None and not spec.rollout.endpoints:
        return new_control_token()
    if token is None:
        log(f"{CONTROL_TOKEN_ENV} is unset: the replicas at rollout.endpoints take weights and sleep/wake calls "
            "from anyone who reaches them")
    return token


@dataclass
class LocalRun:
    """Everything a local run owns; tests reach in through it to inject faults (kill a replica, ...)."""

    spec: RLVRJobSpec
    policy_path: str
    tokenizer: Tokenizer
    train_rows: list[PromptRow]
    log: Callable[[str], None]
    verifier_process: LocalProcess | None = None
    replica_processes: list[LocalProcess] = field(default_factory=list)
    replicas: ReplicaPool | None = None
    verifier: VerifierClient | None = None
    learners: LearnerGroup | None = None
    controller: RLVRController | None = None
    control_token: str | None = None
    """Set by `start` (see `run_control_token`); replicas added later get the same one."""

    @property
    def log_dir(self) -> Path:
        return self.spec.run_dir() / "logs"

    def add_replica(self, port: int | None = None, wait: bool = True) -> LocalProcess:
        """Start one more local rollout replica and add it to the pool, if there is one yet (it gets weights
        before serving). With `wait` false it is only spawned: `start` does that, waits for every service,
        then builds the pool from them."""
        spec = self.spec
        process = start_rollout_replica(spec, self.policy_path, self.log_dir, len(self.replica_processes), port=port,
                                        wait=wait, control_token=self.control_token)
        self.replica_processes.append(process)
        self._log_metrics_url(process)
        if self.replicas is not None:
            self.replicas.add(process.url)
        return process

    def _log_metrics_url(self, process: LocalProcess) -> None:
        """Where the service serves Prometheus metrics, logged once it is spawned (as the controller logs its
        own `metrics:` URL), so a Prometheus can scrape a local run's every process."""
        self.log(f"metrics: {process.url}/metrics ({process.name})")

    def remove_replica(self, process: LocalProcess) -> None:
        """Take a replica out of the pool, then stop it (the operator scaling down)."""
        if self.replicas is not None:
            self.replicas.remove(process.url)
        process.stop()

    async def start(self) -> RLVRController:
        import ray

        from forkrl.rollout.verifier.client import VerifierClient
        from forkrl.trainer.controller.learner_group import LearnerGroup

        spec = self.spec
        threads = spec.resources.torch_threads or 1
        self.control_token = run_control_token(spec, self.log)
        # The services start first and load while Ray and the learner ranks do: each is a process of its
        # own that mostly imports, and waiting for one before starting the next leaves cores idle.
        if spec.verifier.endpoint is None:
            self.verifier_process = start_verifier(verifier_config(spec), self.log_dir, spec.verifier.workers,
                                                   wait=False)
            self._log_metrics_url(self.verifier_process)
        for _ in range(spec.rollout.replicas):
            self.add_replica(wait=False)
        env = {"env_vars": {"OMP_NUM_THREADS": str(threads)}}
        address = os.environ.get("RAY_ADDRESS")
        if address:  # a Ray cluster (a RayJob's on KubeRay, or one started by hand): join it as its driver
            ray.init(address=address, log_to_driver=False, configure_logging=False, runtime_env=env)
            resources = ray.cluster_resources()
            self.log(f"joined the Ray cluster at {address}: {len(ray.nodes())} nodes, "
                     f"{resources.get('CPU', 0):.0f} CPUs, {resources.get('GPU', 0):.0f} GPUs")
        else:  # embedded mode: a private Ray on this host only
            cpus = max(os.cpu_count() or 1, spec.resources.learner_ranks * spec.resources.cpus_per_learner)
            # No idle workers started ahead (one per CPU by default): the run's only Ray work is its learner
            # ranks, actors in a placement group that each get a new worker (measured with Ray 2.60), so
            # those would boot on the cores the run is starting on and be stopped again unused.
            # address="local": without it Ray joins a cluster `ray start` left on this host (a Ray node
            # running this as a task of `forkrl compare`) and refuses num_cpus.
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=False,
                     runtime_env=env, _system_config={"prestart_worker_first_driver": False})
        learner_spec = spec.learner
        if learner_spec.max_sequence_length is None:
            learner_spec = learner_spec.model_copy(update={
                "max_sequence_length": spec.model.max_prompt_tokens + spec.model.max_response_tokens})
        if learner_spec.max_response_length is None:
            learner_spec = learner_spec.model_copy(update={"max_response_length": spec.model.max_response_tokens})
        self.learners = LearnerGroup(learner_spec, spec.objective, self.policy_path, spec.resources.learner_ranks,
                                     spec.resources.cpus_per_learner, spec.resources.gpus_per_learner, threads,
                                     log=self.log, address=None if address else LOCAL_BIND_HOST)
        for process in [*([self.verifier_process] if self.verifier_process else []), *self.replica_processes]:
            process.wait_healthy()
        verifier_url = self.verifier_process.url if self.verifier_process else spec.verifier.endpoint
        self.verifier = VerifierClient(verifier_url, timeout_s=spec.verifier.request_timeout_s,
                                       max_retries=spec.verifier.max_retries)
        self.replicas = ReplicaPool([p.url for p in self.replica_processes], endpoints=spec.rollout.endpoints,
                                    log=self.log, connect_timeout_s=spec.rollout.connect_timeout_s,
                                    idle_timeout_s=spec.rollout.idle_timeout_s, control_token=self.control_token)
        stream = PromptStream(self.train_rows, spec.seed, spec.data.shuffle)
        pusher = WeightPusher(self.learners, spec.rollout.weight_sync, spec.checkpoint_dir() / "weights", self.log,
                              control_token=self.control_token)
        self.controller = RLVRController(spec, self.tokenizer, self.learners, self.replicas, self.verifier, stream,
                                         self.log, pusher=pusher)
        return self.controller

    async def stop(self) -> None:
        import ray

        if self.learners is not None:
            self.learners.shutdown()
        if self.replicas is not None:
            await self.replicas.aclose()
        if self.verifier is not None:
            await self.verifier.aclose()
        for process in [*self.replica_processes, *([self.verifier_process] if self.verifier_process else [])]:
            process.stop()
        with contextlib.suppress(Exception):
            ray.shutdown()
