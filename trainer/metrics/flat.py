"""Nested dataclass records <-> flat `a/b/c` keyed dicts (one JSONL line, one TensorBoard tag per number).

The key of a value is the path of field names that leads to it, so a record's name on disk is fixed by
its type; `unflatten(T, flatten(record)) == record`. A `dict[str, float]` field keeps its own keys under
the field's path; a field that is None is left out; lists stay lists (JSON), and are not scalars.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")
FlatValue = float | int | list[Any]


def flatten(record: Any, prefix: str = "") -> dict[str, FlatValue]:
    """record: a dataclass instance -> {path: value} with None fields left out."""
    out: dict[str, FlatValue] = {}
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        key = f"{prefix}{field.name}"
        if value is None:
            continue
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, key + "/"))
        elif isinstance(value, Mapping):
            out.update({f"{key}/{name}": item for name, item in value.items()})
        else:
            out[key] = value
    return out


def scalars(flat: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of a flat record (what TensorBoard and gauges can show)."""
    return {k: float(v) for k, v in flat.items() if isinstance(v, int | float) and not isinstance(v, bool)}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def unflatten(cls: type[T], flat: Mapping[str, Any], prefix: str = "") -> T | None:
    """The `cls` record whose `flatten` is `flat` (extra keys ignored); None when none of its required
    fields is present (an optional sub-record that was left out)."""
    kwargs: dict[str, Any] = {}
    missing: list[str] = []
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = f"{prefix}{field.name}"
        tp = _strip_optional(_hints(cls)[field.name])
        if dataclasses.is_dataclass(tp):
            value = unflatten(tp, flat, key + "/")  # type: ignore[arg-type]
        elif typing.get_origin(tp) is dict:
            value = {k[len(key) + 1:]: v for k, v in flat.items() if k.startswith(key + "/")}
        elif key in flat:
            value = int(flat[key]) if tp is int else flat[key]
        else:
            value = None
        if value is None:
            has_default = (field.default is not dataclasses.MISSING
                           or field.default_factory is not dataclasses.MISSING)
            if not has_default:
                missing.append(field.name)
            continue
        kwargs[field.name] = value
    if missing:
        if len(missing) == sum(1 for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING):
            return None
        raise ValueError(f"{cls.__name__} at {prefix or '<root>'}: missing {', '.join(missing)}")
    return cls(**kwargs)
