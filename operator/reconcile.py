"""One reconcile of one RLVRJob: read it, settle its spec, observe its children, write the status,
then create/update/prune the children. Level-triggered and idempotent: running it twice in a row
writes nothing the second time.

Order matters for crash safety: the status (accepted spec, retry count) is written *before* the
children it implies, so an operator killed half-way resumes with the same intent; children are
applied only when they differ from what is wanted (see drift.needs_apply).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from pydantic import ValidationError

from forkrl.operator.children import build_children, control_secret
from forkrl.operator.context import JobContext
from forkrl.operator.drift import merge_diff, needs_apply
from forkrl.operator.kube import Kube, KubeError
from forkrl.operator.metrics import OperatorMetrics
from forkrl.operator.names import JOB_UID_ANNOTATION, RAY_JOB_LABEL, JobNames, owned_by
from forkrl.operator.observe import Children, children_of, describe_pod_failure, now, observe
from forkrl.operator.quantity import quantities_equal
from forkrl.operator.resource import TERMINAL_PHASES, RLVRJobResourceSpec
from forkrl.operator.spec_changes import settle
from forkrl.operator.status import derive, services_ready
from forkrl.rollout.control_token import new_control_token
from forkrl.trainer.spec.job import format_validation_error

log = logging.getLogger("forkrl.operator")
# Fault injection for tests: exit abruptly after this many child applies (a crash mid-reconcile).
CRASH_ENV = "FORKRL_OPERATOR_CRASH_AFTER_APPLIES"
PostEvent = Callable[[dict[str, Any], str, str, str], None]
CONFLICT_RETRIES = 5


class JobQueue:
    """Per-job serialisation with coalescing: a reconcile requested while one runs makes that one run
    once more instead of queueing another."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._again: dict[tuple[str, str], bool] = {}

    def lock(self, key: tuple[str, str]) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def run(self, key: tuple[str, str], work: Callable[[], Awaitable[None]]) -> None:
        if key in self._again:
            self._again[key] = True
            return
        self._again[key] = False
        try:
            while True:
                async with self.lock(key):
                    await work()
                if not self._again.get(key):
                    break
                self._again[key] = False
        finally:
            self._again.pop(key, None)

    def forget(self, key: tuple[str, str]) -> None:
        self._locks.pop(key, None)


class Reconciler:
    def __init__(self, kube: Kube, metrics: OperatorMetrics, post_event: PostEvent, workers: int = 16) -> None:
        self.kube = kube
        self.metrics = metrics
        self.post_event = post_event
        self.queue = JobQueue()
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube")
        self._crash_after = int(os.environ[CRASH_ENV]) if os.environ.get(CRASH_ENV) else None
        self._applies = 0
        self._phases: dict[tuple[str, str], str] = {}
        self._control_secrets: set[tuple[str, str]] = set()
        """(namespace, Secret name) known to exist: created here, or found existing (409) once."""

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, partial(fn, *args, **kwargs))

    # ------------------------------------------------------------------ entry points
    async def request(self, namespace: str, name: str, children: Callable[[], Children]) -> None:
        """Reconcile (coalesced with one already running for this job)."""
        await self.queue.run((namespace, name), partial(self.reconcile, namespace, name, children))

    async def reconcile(self, namespace: str, name: str, children: Callable[[], Children]) -> None:
        start = time.monotonic()
        try:
            for _ in range(CONFLICT_RETRIES):
                try:
                    await self._reconcile(namespace, name, children)
                    break
                except KubeError as err:
                    # The RLVRJob changed between our read and our status write (kopf's own annotations,
                    # a spec edit, the other replica): read it again.
                    if not err.conflict:
                        raise
                    self.metrics.reconciles.labels(outcome="conflict").inc()
            else:
                raise KubeError(409, f"{namespace}/{name}: status write kept conflicting")
        except Exception:
            self.metrics.reconciles.labels(outcome="error").inc()
            raise
        finally:
            self.metrics.reconcile_seconds.observe(time.monotonic() - start)
        self.metrics.reconciles.labels(outcome="ok").inc()

    async def record_pod_failure(self, namespace: str, job: str, pod: dict[str, Any]) -> None:
        """Keep a failed learner pod in status.lastFailure (KubeRay may delete the pod right after)."""
        async with self.queue.lock((namespace, job)):
            body = await self.call(self.kube.get, "RLVRJob", namespace, job)
            if body is None:
                return
            status = body.get("status") or {}
            attempt = JobNames(job, namespace).ray_job(int(status.get("retries") or 0))
            ray_job = pod["metadata"].get("labels", {}).get(RAY_JOB_LABEL)
            recorded = status.get("lastFailure") or {}
            if status.get("phase") in TERMINAL_PHASES or ray_job != attempt or recorded.get("rayJob") == attempt:
                return
            if (body.get("spec") or {}).get("suspend"):
                # Pods of a suspended job are deleted on purpose; one exiting with an error on the way
                # out must not fail the attempt it resumes with.
                return
            failure = {"reason": "PodFailed", "message": describe_pod_failure(pod), "rayJob": attempt, "time": now()}
            await self.call(
                self.kube.patch_status, namespace, job, {"lastFailure": failure}, body["metadata"]["resourceVersion"]
            )
            self.metrics.status_writes.inc()

    async def sweep(self, namespace: str, name: str, uid: str, children: Children) -> None:
        """On deletion: delete every child this job owns (the garbage collector would too). A retained
        claim has no owner reference and stays; so do children of an earlier job of the same name."""
        for kind, objects in children.items():
            for child, summary in objects.items():
                deleting = summary.get("metadata", {}).get("deletionTimestamp")
                if deleting or not owned_by(summary, uid):
                    continue
                if await self.call(self.kube.delete, kind, namespace, child):
                    self.metrics.deletes.labels(kind=kind).inc()
        self.forget(namespace, name)

    def forget(self, namespace: str, name: str) -> None:
        """Drop what is kept in memory for a job that is gone (its lock, its phase in the gauge)."""
        self.queue.forget((namespace, name))
        self._phases.pop((namespace, name), None)
        self._control_secrets = {k for k in self._control_secrets if k[0] != namespace or
                                 not k[1].startswith(f"{name}-control-")}
        self._update_phase_gauge()

    # ------------------------------------------------------------------ the reconcile
    async def _reconcile(self, namespace: str, name: str, children_of: Callable[[], Children]) -> None:
        body = await self.call(self.kube.get, "RLVRJob", namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        meta, status = body["metadata"], body.get("status") or {}
        names = JobNames(name, namespace)
        spec, effective, refused, spec_error = self._settle_spec(name, body.get("spec") or {}, status)
        attempt = int(status.get("retries") or 0)
        children = children_of()
        observation = observe(names, meta, spec, status, children, attempt, refused, spec_error)
        decision = derive(status, observation)
        new_status = dict(decision.status)
        if effective is not None:
            # A string: nulls are meaningful in a spec (`dual_clip_c: null`) but delete keys in a merge patch.
            new_status["acceptedSpec"] = json.dumps(effective, sort_keys=True, separators=(",", ":"))
        patch = merge_diff(status, new_status)
        if patch:
            await self.call(self.kube.patch_status, namespace, name, patch, meta["resourceVersion"])
            self.metrics.status_writes.inc()
        for kind, reason, message in decision.events:
            self.post_event(body, kind, reason, message)
            self.metrics.events.labels(reason=reason).inc()
        phase = new_status["phase"]
        self._phases[(namespace, name)] = phase
        self._update_phase_gauge()
        if phase in TERMINAL_PHASES:
            await self._wind_down(names, children, attempt)
            return
        if spec is None:
            return
        attempt = int(new_status.get("retries") or 0)
        live_ray_job = children.get("RayJob", {}).get(names.ray_job(attempt))
        live_suspend = (live_ray_job or {}).get("spec", {}).get("suspend") if live_ray_job else None
        live_claim = children.get("PersistentVolumeClaim", {}).get(names.claim)
        # The learner starts only once the rollout and verifier are available (condition ServicesReady):
        # until then no RayJob is created for the attempt and a suspended one is not resumed.
        hold = not services_ready(observation)
        claim_spec = (live_claim or {}).get("spec")
        ctx = JobContext(names, meta["uid"], spec, attempt, live_suspend, claim_spec, hold_learner=hold)
        await self._ensure_control_secret(ctx, body)
        for manifest in build_children(ctx):
            live = children.get(manifest["kind"], {}).get(manifest["metadata"]["name"])
            if live is not None and live["metadata"].get("deletionTimestamp"):
                continue  # applied again once it is gone (its deletion triggers a reconcile)
            if live is None and hold and manifest["kind"] == "RayJob":
                continue  # created by the reconcile a Deployment's readiness triggers
            if needs_apply(manifest, live):
                await self._apply(manifest)
                if live is None:
                    message = f"created {manifest['kind']} {manifest['metadata']['name']}"
                    self.post_event(body, "Normal", "Created", message)
                elif manifest["kind"] == "PersistentVolumeClaim" and adopted(live, ctx.uid):
                    self.post_event(body, "Normal", "AdoptedClaim", adoption_message(ctx, live))
        for other, summary in children.get("RayJob", {}).items():
            if other != ctx.ray_job_name and not summary["metadata"].get("deletionTimestamp"):
                await self.call(self.kube.delete, "RayJob", namespace, other)
                self.metrics.deletes.labels(kind="RayJob").inc()

    def _settle_spec(
        self, name: str, data: dict[str, Any], status: dict[str, Any]
    ) -> tuple[RLVRJobResourceSpec | None, dict[str, Any] | None, list[str], str | None]:
        """(spec to build from, its dump for status.acceptedSpec, refused changes, validation error)."""
        try:
            current = RLVRJobResourceSpec.model_validate({**data, "name": name})
        except ValidationError as err:
            return None, None, [], format_validation_error(err, "spec").replace("\n", " ")
        current_dump = current.model_dump(mode="json")
        accepted = json.loads(status["acceptedSpec"]) if status.get("acceptedSpec") else None
        effective_dump, refused = settle(accepted, current_dump)
        try:
            effective = RLVRJobResourceSpec.model_validate(effective_dump)
        except ValidationError:
            # The rollable changes do not combine with the accepted spec: take none of them.
            effective_dump, refused = (
                accepted,
                [*refused, "(rollable changes that are invalid with the accepted spec)"],
            )
            effective = RLVRJobResourceSpec.model_validate(effective_dump)
        return effective, effective_dump, refused, None

    async def _ensure_control_secret(self, ctx: JobContext, body: dict[str, Any]) -> None:
        """Creates the job's control-token Secret once per operator process: a 409 means it exists (made by
        this or an earlier operator, or by hand) and is kept as it is. Before the pods that read it."""
        key = (ctx.names.namespace, ctx.control_secret)
        if key in self._control_secrets:
            return
        try:
            await self.call(self.kube.create, control_secret(ctx, new_control_token()))
        except KubeError as err:
            if not err.conflict:
                raise
        else:
            self.metrics.applies.labels(kind="Secret").inc()
            self.post_event(body, "Normal", "Created", f"created Secret {ctx.control_secret} (control token)")
        self._control_secrets.add(key)

    async def _apply(self, manifest: dict[str, Any]) -> None:
        await self.call(self.kube.apply, manifest)
        self.metrics.applies.labels(kind=manifest["kind"]).inc()
        self._applies += 1
        if self._crash_after is not None and self._applies >= self._crash_after:
            log.error("%s=%d reached: exiting without cleanup", CRASH_ENV, self._crash_after)
            os._exit(137)

    async def _wind_down(self, names: JobNames, children: Children, attempt: int) -> None:
        """A finished job keeps its children for inspection but frees its pods; nothing is recreated."""
        for name, deployment in children.get("Deployment", {}).items():
            if (deployment.get("spec") or {}).get("replicas", 0) > 0:
                await self.call(self.kube.merge_patch, "Deployment", names.namespace, name, {"spec": {"replicas": 0}})
        for name, ray_job in children.get("RayJob", {}).items():
            state = (ray_job.get("status") or {}).get("jobDeploymentStatus", "")
            finished = state in ("Complete", "Failed", "ValidationFailed", "Suspended", "Suspending")
            if not finished and not (ray_job.get("spec") or {}).get("suspend"):
                await self.call(self.kube.merge_patch, "RayJob", names.namespace, name, {"spec": {"suspend": True}})

    def _update_phase_gauge(self) -> None:
        counts: dict[str, int] = {}
        for phase in self._phases.values():
            counts[phase] = counts.get(phase, 0) + 1
        for phase in ("Pending", "Running", "Succeeded", "Failed", "Suspended"):
            self.metrics.jobs.labels(phase=phase).set(counts.get(phase, 0))


def adopted(live_claim: dict[str, Any], uid: str) -> bool:
    """Whether a live claim was last used by another RLVRJob (a retained claim a new job takes over)."""
    annotations = live_claim.get("metadata", {}).get("annotations") or {}
    return annotations.get(JOB_UID_ANNOTATION) != uid and not owned_by(live_claim, uid)


def adoption_message(ctx: JobContext, live_claim: dict[str, Any]) -> str:
    storage = ((live_claim.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage")
    message = f"reusing the retained PersistentVolumeClaim {ctx.names.claim} ({storage}) of an earlier {ctx.names.job}"
    created = ctx.cluster.storage.create_claim
    if created is not None and storage is not None and not quantities_equal(created.size, str(storage)):
        message += f"; it keeps its size {storage} (the spec asks {created.size}, a claim cannot shrink)"
    return message


__all__ = ["Children", "KubeError", "Reconciler", "children_of", "observe"]
