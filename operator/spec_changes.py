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


def changed_paths(old: Any, new: Any) -> list[str]:
    """Dotted paths of the leaves that differ (lists compare as wholes)."""
    return [".".join(keys) for keys in _changed_keys(old, new, ())]


def _changed_keys(old: Any, new: Any, prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Key paths of the leaves that differ, as tuples: map keys may hold dots (`kubernetes.io/hostname`)."""
    if isinstance(old, dict) and isinstance(new, dict):
        paths = []
        for key in sorted(old.keys() | new.keys()):
            paths += _changed_keys(old.get(key), new.get(key), (*prefix, key))
        return paths
    return [] if old == new else [prefix]


def _get(data: Any, keys: tuple[str, ...]) -> Any:
    for part in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def _set(data: dict[str, Any], keys: tuple[str, ...], value: Any) -> None:
    *parents, last = keys
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
    for keys in _changed_keys(accepted, current, ()):
        path = ".".join(keys)
        if rollable(path):
            _set(effective, keys, _get(current, keys))
        else:
            refused.append(f"{path} ({_show(_get(accepted, keys))} -> {_show(_get(current, keys))})")
    return effective, refused
