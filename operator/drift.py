"""Comparing what the operator wants with what the cluster has (pure).

- `summarize(body)`: the part of a live child the operator keeps in its index (no managedFields, and of
  the status only what the phase derivation reads), so memory grows with jobs, not with object churn.
- `needs_apply(desired, live)`: apply when the child is missing, was built from another manifest
  (hash annotation) or was edited by hand (a field the operator sets has another value). Server
  defaults (extra fields, `protocol: TCP`, ...) are not drift; quantities compare numerically.
- `merge_diff(old, new)`: the JSON merge patch turning old into new (None deletes a key).
"""

from __future__ import annotations

from typing import Any

from forkrl.operator.names import HASH_ANNOTATION
from forkrl.operator.quantity import quantities_equal

_META_KEYS = (
    "name",
    "namespace",
    "uid",
    "labels",
    "annotations",
    "ownerReferences",
    "deletionTimestamp",
    "generation",
    "resourceVersion",
)
_STATUS_KEYS = {
    "Deployment": ("replicas", "readyReplicas", "availableReplicas", "updatedReplicas", "observedGeneration"),
    "RayJob": ("jobDeploymentStatus", "jobStatus", "reason", "message", "rayClusterName", "jobId"),
}
_BODY_KEYS = ("spec", "data", "rules", "roleRef", "subjects")


def summarize(body: Any) -> dict[str, Any]:
    """A plain-dict copy of a child with only what the reconciler reads."""
    meta = body.get("metadata", {})
    out: dict[str, Any] = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {key: plain(meta[key]) for key in _META_KEYS if meta.get(key) is not None},
    }
    for key in _BODY_KEYS:
        if body.get(key) is not None:
            out[key] = plain(body[key])
    keys = _STATUS_KEYS.get(str(body.get("kind")))
    status = body.get("status") or {}
    if keys:
        out["status"] = {key: plain(status[key]) for key in keys if status.get(key) is not None}
    return out


def plain(value: Any) -> Any:
    if isinstance(value, dict) or hasattr(value, "items"):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def is_subset(desired: Any, live: Any) -> bool:
    """Whether `live` holds every value of `desired` (dicts recursively, lists item by item)."""
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return False
        for key, value in desired.items():
            if key not in live:
                if value in ({}, [], None):
                    continue
                return False
            if not is_subset(value, live[key]):
                return False
        return True
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(desired) == len(live)
            and all(is_subset(d, v) for d, v in zip(desired, live, strict=True))
        )
    if desired == live:
        return True
    if isinstance(desired, str) and isinstance(live, str | int | float) and not isinstance(live, bool):
        return quantities_equal(desired, str(live))
    return isinstance(desired, int | float) and isinstance(live, int | float) and float(desired) == float(live)


def needs_apply(desired: dict[str, Any], live: dict[str, Any] | None) -> bool:
    if live is None:
        return True
    annotations = live.get("metadata", {}).get("annotations") or {}
    if annotations.get(HASH_ANNOTATION) != desired["metadata"]["annotations"][HASH_ANNOTATION]:
        return True
    return not is_subset(desired, live)


def merge_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """JSON merge patch (RFC 7386) from `old` to `new`; empty when equal."""
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            sub = merge_diff(before, value)
            if sub:
                patch[key] = sub
        elif value != before or key not in old:
            patch[key] = value
    return patch
