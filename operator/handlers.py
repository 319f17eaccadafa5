"""kopf handlers of the forkrl operator, registered onto an explicit registry by `register()`.

- RLVRJob: create / update of `spec` / resume (operator start) / a periodic resync -> reconcile;
  delete -> sweep the children the job owns (the finalizer `forkrl.dev/finalizer` holds the object until
  then). With `finalizer=False` no finalizer is added (one left by an earlier run is removed): a job
  deleted while the operator is down goes at once and the garbage collector deletes its children through
  their owner references. kopf's timers always add a finalizer, so the resync is then the operator's own
  loop over an index of the jobs (which does not know kopf's peering pause: one replica only).
- Operator start: a sweep of the children of jobs that no longer exist (cleanup.sweep_orphans).
- Children (RayJob, Deployment, Service, ConfigMap, ServiceAccount, Role, RoleBinding, PVC, PodMonitor,
  NetworkPolicy):
  watched with a server-side label selector `forkrl.dev/job`; each kind feeds a kopf index keyed by
  (namespace, job) that the reconciler reads instead of the API server, and its events trigger the
  owner's reconcile (a deleted child is recreated, a RayJob/Deployment status change updates the phase,
  a write of `<job>-status` updates the progress).
- Learner pods: a Failed pod is recorded in the owner's status right away (KubeRay may delete it).
Nothing is kept in memory that the next reconcile cannot rebuild from the cluster.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from forkrl.operator.cleanup import sweep_orphans
from forkrl.operator.drift import plain, summarize
from forkrl.operator.kube import CHILD_KINDS, KINDS
from forkrl.operator.names import COMPONENT_LABEL, JOB_LABEL, JobNames
from forkrl.operator.pod_problems import container_problem
from forkrl.operator.reconcile import Reconciler, children_of
from forkrl.operator.resource import GROUP, PLURAL, VERSION

log = logging.getLogger("forkrl.operator")
FINALIZER = "forkrl.dev/finalizer"
# Children whose every change matters to the phase; for the others only a deletion does.
STATUS_KINDS = frozenset({"RayJob", "Deployment"})
SERVICE_COMPONENTS = frozenset({"rollout", "verifier"})
LEARNER_PODS = f"{JOB_LABEL},{COMPONENT_LABEL} in (learner,controller)"


@dataclass(frozen=True)
class HandlerConfig:
    resync_seconds: float = 30.0
    peering_lifetime: int = 60
    identity: str = "forkrl-operator"
    # False: no finalizer on RLVRJobs; deletion never waits for the operator (see the module doc).
    finalizer: bool = True
    # Namespaces served (empty: all); the start-up orphan sweep looks only there.
    namespaces: tuple[str, ...] = ()


def _indices(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in kwargs.items() if key.startswith("children_")}


def _reconciler(memo: Any) -> Reconciler:
    return memo.reconciler


def register(registry: kopf.OperatorRegistry, config: HandlerConfig) -> None:
    job = {"group": GROUP, "version": VERSION, "plural": PLURAL, "registry": registry}

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """An explicit kubeconfig ($KUBECONFIG, set by --kubeconfig) wins; in a pod, the ServiceAccount."""
        if os.environ.get("KUBECONFIG"):
            return kopf.login_with_kubeconfig(**kwargs)
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, memo: Any, **kwargs: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration"
        )
        settings.posting.reporting_component = "forkrl-operator"
        settings.posting.reporting_instance = config.identity
        # kopf's own per-handler messages stay in the log; Events are the operator's transitions.
        settings.posting.level = logging.WARNING
        # Bounded watches: a silently stalled stream is reopened (nolar/kopf#585).
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.watching.connect_timeout = 30
        settings.networking.request_timeout = 60
        settings.peering.lifetime = config.peering_lifetime
        # A deleted job waits for its resync timer to stop before the finalizer goes; poll that often
        # (kopf's default is 60 s when a tick is running at the moment of deletion).
        settings.background.cancellation_polling = 1.0
        for kind in CHILD_KINDS:
            group, version, plural = KINDS[kind]
            settings.watching.label_selectors[group, version, plural] = JOB_LABEL
        settings.watching.label_selectors["", "v1", "pods"] = LEARNER_PODS
        reconciler = _reconciler(memo)
        memo.background = [asyncio.create_task(_sweep_orphans(reconciler, config.namespaces))]
        if not config.finalizer:
            loop = resync_forever(reconciler, kwargs["jobs"], _indices(kwargs), config.resync_seconds)
            memo.background.append(asyncio.create_task(loop))

    @kopf.on.cleanup(registry=registry)
    async def stop_background(memo: Any, **_: Any) -> None:
        for task in getattr(memo, "background", ()):
            task.cancel()

    # ------------------------------------------------------------------ the RLVRJob
    async def reconcile(name: str, namespace: str, memo: Any, **kwargs: Any) -> None:
        indices = _indices(kwargs)
        await _reconciler(memo).request(namespace, name, lambda: children_of(indices, namespace, name))

    kopf.on.resume(**job, id="resume", backoff=3)(reconcile)
    kopf.on.create(**job, id="create", backoff=3)(reconcile)
    kopf.on.update(**job, id="update", field="spec", backoff=3)(reconcile)

    if config.finalizer:

        @kopf.timer(**job, id="resync", interval=config.resync_seconds, initial_delay=config.resync_seconds)
        async def resync(name: str, namespace: str, memo: Any, logger: logging.Logger, **kwargs: Any) -> None:
            try:
                await reconcile(name=name, namespace=namespace, memo=memo, **kwargs)
            except Exception as err:  # the next tick retries; a timer error would only be logged by kopf too
                logger.warning("resync of %s/%s failed: %s", namespace, name, err)

    else:

        @kopf.index(**job, id="jobs")
        async def index_job(name: str, namespace: str, **_: Any) -> dict[tuple[str, str], bool]:
            return {(namespace, name): True}

    # optional: called when kopf sees the deletion, and no finalizer waits for it.
    @kopf.on.delete(**job, id="sweep", optional=not config.finalizer)
    async def sweep(name: str, namespace: str, uid: str, memo: Any, **kwargs: Any) -> None:
        await _reconciler(memo).sweep(namespace, name, uid, children_of(_indices(kwargs), namespace, name))

    @kopf.on.event(**job, id="gone")
    async def gone(type: str | None, name: str, namespace: str, memo: Any, **_: Any) -> None:
        if type == "DELETED":
            _reconciler(memo).forget(namespace, name)

    # ------------------------------------------------------------------ children
    async def index_child(namespace: str, labels: Any, body: Any, **_: Any) -> dict[tuple[str, str], Any]:
        return {(namespace, labels[JOB_LABEL]): summarize(body)}

    async def child_changed(
        type: str | None, name: str, namespace: str, labels: Any, body: Any, memo: Any, **kwargs: Any
    ) -> None:
        if type is None:  # the initial listing: resume handlers reconcile every job at start
            return
        owner = labels[JOB_LABEL]
        kind = body.get("kind")
        relevant = (
            type == "DELETED"
            or kind in STATUS_KINDS
            or (kind == "ConfigMap" and name == JobNames(owner, namespace).status)
        )
        if not relevant:
            return
        try:
            await reconcile(name=owner, namespace=namespace, memo=memo, **kwargs)
        except Exception as err:
            log.warning("reconcile of %s/%s after %s %s %s failed: %s", namespace, owner, type, kind, name, err)

    for kind in CHILD_KINDS:
        group, version, plural = KINDS[kind]
        where = {
            "group": group,
            "version": version,
            "plural": plural,
            "registry": registry,
            "labels": {JOB_LABEL: kopf.PRESENT},
        }
        kopf.index(**where, id=f"children_{plural}")(index_child)
        kopf.on.event(**where, id=f"changed_{plural}")(child_changed)

    # The pods of the rollout and verifier Deployments, as kind "Pod" of the job's children snapshot: the
    # status shows why they are not ready (operator/pod_problems.py). Never applied or deleted: the sweep only
    # deletes children the job owns, and a pod's owner is its ReplicaSet.
    last_problems: dict[tuple[str, str], str | None] = {}

    def is_service_pod(labels: Any, **_: Any) -> bool:
        return labels.get(COMPONENT_LABEL) in SERVICE_COMPONENTS

    async def index_service_pod(namespace: str, labels: Any, body: Any, **_: Any) -> dict[tuple[str, str], Any]:
        return {(namespace, labels[JOB_LABEL]): {"kind": "Pod", **summarize_pod(body)}}

    async def service_pod_changed(type: str | None, namespace: str, labels: Any, body: Any, memo: Any,
                                  **kwargs: Any) -> None:
        if type is None:
            return
        problem = container_problem(summarize_pod(body))
        key = (namespace, body["metadata"]["name"])
        if last_problems.get(key) == problem and type != "DELETED":
            return  # nothing the status shows changed
        if type == "DELETED":
            last_problems.pop(key, None)
        else:
            last_problems[key] = problem
        try:
            await reconcile(name=labels[JOB_LABEL], namespace=namespace, memo=memo, **kwargs)
        except Exception as err:
            log.warning("reconcile of %s/%s after pod %s changed failed: %s", namespace, labels[JOB_LABEL],
                        body["metadata"]["name"], err)

    service_pods = {"group": "", "version": "v1", "plural": "pods", "registry": registry,
                    "labels": {JOB_LABEL: kopf.PRESENT}, "when": is_service_pod}
    kopf.index(**service_pods, id="children_pods")(index_service_pod)
    kopf.on.event(**service_pods, id="service_pod")(service_pod_changed)

    def learner_pod_failed(body: Any, **_: Any) -> bool:
        return (body.get("status") or {}).get("phase") == "Failed"

    @kopf.on.event(
        group="",
        version="v1",
        plural="pods",
        registry=registry,
        id="learner_pod",
        labels={JOB_LABEL: kopf.PRESENT},
        when=learner_pod_failed,
    )
    async def learner_pod(type: str | None, namespace: str, labels: Any, body: Any, memo: Any, **kwargs: Any) -> None:
        if type == "DELETED":
            return
        owner = labels[JOB_LABEL]
        try:
            await _reconciler(memo).record_pod_failure(namespace, owner, summarize_pod(body))
            await reconcile(name=owner, namespace=namespace, memo=memo, **kwargs)
        except Exception as err:
            log.warning("recording the failure of pod %s/%s failed: %s", namespace, body["metadata"]["name"], err)


def summarize_pod(body: Any) -> dict[str, Any]:
    meta, status = body.get("metadata", {}), body.get("status") or {}
    return {
        "metadata": {"name": meta.get("name"), "labels": dict(meta.get("labels") or {})},
        "status": {
            "phase": status.get("phase"),
            "reason": status.get("reason"),
            "message": status.get("message"),
            "containerStatuses": plain(status.get("containerStatuses") or []),
        },
    }


async def _sweep_orphans(reconciler: Reconciler, namespaces: tuple[str, ...]) -> None:
    try:
        await sweep_orphans(reconciler, namespaces)
    except Exception as err:  # never fatal: the next start sweeps again
        log.warning("sweeping the children of deleted jobs failed: %s", err)


async def resync_forever(
    reconciler: Reconciler, jobs: Mapping[tuple[str, str], Any], indices: dict[str, Any], interval: float
) -> None:
    """Reconcile every job in the `jobs` index every `interval` seconds (the resync without kopf's timers)."""

    async def one(namespace: str, name: str) -> None:
        try:
            await reconciler.request(namespace, name, lambda: children_of(indices, namespace, name))
        except Exception as err:  # the next round retries
            log.warning("resync of %s/%s failed: %s", namespace, name, err)

    while True:
        await asyncio.sleep(interval)
        await asyncio.gather(*(one(namespace, name) for namespace, name in list(jobs)))
