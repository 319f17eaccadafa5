"""What the operator deletes when a job is gone.

- `sweep` (the finalizer's delete handler, see Reconciler.sweep): the children the deleted job owns.
- `sweep_orphans` (once at operator start): children of jobs that no longer exist, found by label. They
  are left behind when a job is deleted while the operator is down and the garbage collector has not
  (yet) removed them, or when a child lost its owner reference. Only objects the operator made
  (`app.kubernetes.io/managed-by=forkrl-operator` and `forkrl.dev/job`) are candidates, and a retained
  checkpoint claim (`forkrl.dev/retained=true`) is never one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from forkrl.operator.kube import CHILD_KINDS
from forkrl.operator.names import FIELD_MANAGER, JOB_LABEL, RETAINED_LABEL

if TYPE_CHECKING:
    from forkrl.operator.reconcile import Reconciler

log = logging.getLogger("forkrl.operator")
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
ORPHAN_SELECTOR = f"{JOB_LABEL},{MANAGED_BY_LABEL}={FIELD_MANAGER},{RETAINED_LABEL}!=true"


def orphans(children: Iterable[dict[str, Any]], jobs: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """The children (listed *before* `jobs`) whose job, (namespace, forkrl.dev/job), is not in `jobs`."""
    existing = set(jobs)
    out = []
    for child in children:
        meta = child.get("metadata", {})
        labels = meta.get("labels") or {}
        job = labels.get(JOB_LABEL)
        if job is None or labels.get(MANAGED_BY_LABEL) != FIELD_MANAGER or labels.get(RETAINED_LABEL) == "true":
            continue
        if meta.get("deletionTimestamp") or (meta.get("namespace"), job) in existing:
            continue
        out.append(child)
    return out


async def sweep_orphans(reconciler: Reconciler, namespaces: Sequence[str] = ()) -> list[tuple[str, str, str]]:
    """Delete the children of jobs that do not exist in `namespaces` (empty: all); returns (kind, ns, name)
    of each deletion started. Children are listed before the jobs, so a job created meanwhile keeps its."""
    scopes: list[str | None] = list(namespaces) or [None]
    kube = reconciler.kube
    children: list[dict[str, Any]] = []
    for kind in CHILD_KINDS:
        for scope in scopes:
            children += await reconciler.call(kube.list_objects, kind, scope, ORPHAN_SELECTOR)
    jobs = []
    for scope in scopes:
        for job in await reconciler.call(kube.list_objects, "RLVRJob", scope):
            jobs.append((job["metadata"]["namespace"], job["metadata"]["name"]))
    deleted = []
    for child in orphans(children, jobs):
        kind, meta = child["kind"], child["metadata"]
        if await reconciler.call(kube.delete, kind, meta["namespace"], meta["name"]):
            reconciler.metrics.deletes.labels(kind=kind).inc()
            deleted.append((kind, meta["namespace"], meta["name"]))
    if deleted:
        listed = ", ".join(f"{kind} {ns}/{name}" for kind, ns, name in deleted)
        log.info("deleted %d children of jobs that no longer exist: %s", len(deleted), listed)
    return deleted
