"""Which spec changes a running RLVRJob takes (pure).

The children are built from the *accepted* spec (kept in `status.acceptedSpec`). A later spec is
compared field by field with it: changes that can roll are taken (rollout replica count, suspend, the
verifier and rollout pods, the retry budget); any other change (parallelism, model, objective, learner
pods, ...) would need a new learner and is refused: the accepted value stays and the SpecAccepted
condition names the field. Reverting the change makes the condition true again.
"""

from __future__ import annotations

import copy
import json
from typing import Any

# Dotted prefixes of fields that may change while the job runs.
ROLLABLE = ("suspend", "rollout.replicas", "cluster.rollout", "cluster.verifier", "cluster.max_retries")


def rollable(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + ".") for prefix in ROLLABLE)


def changed_paths(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the leaves that differ (lists compare as wholes)."""
    if isinstance(old, dict) and isinstance(new, dict):
        paths = []
        for key in sorted(old.keys() | new.keys()):
            path = f"{prefix}.{key}" if prefix else key
            paths += changed_paths(old.get(key), new.get(key), path)
        return paths
    return [] if old == new else [prefix]


def _get(data: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    if value is None:
        data.pop(last, None)
    else:
        data[last] = copy.deepcopy(value)


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True)[:60]


def settle(accepted: dict[str, Any] | None, current: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the spec to run, refused changes as "path (old -> new)") for normalized spec dumps."""
    if accepted is None:
        return copy.deepcopy(current), []
    effective = copy.deepcopy(accepted)
    refused = []
    for path in changed_paths(accepted, current):
        if rollable(path):
            _set(effective, path, _get(current, path))
        else:
            refused.append(f"{path} ({_show(_get(accepted, path))} -> {_show(_get(current, path))})")
    return effective, refused
