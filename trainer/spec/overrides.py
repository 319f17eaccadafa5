"""`--set FIELD=VALUE` on the command line: dotted spec fields changed before validation.

Shared by `forkrl train` and the experiment commands (`compare`, `sweep`, `reproduce`), so a field path or
value that is wrong fails the same way everywhere, naming the option and the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from forkrl.trainer.spec.job import RLVRJobSpec, SpecError, load_spec, parse_spec


def parse_assignment(text: str, option: str) -> tuple[str, str]:
    """`FIELD=VALUE` -> (field, raw value text), or a SpecError naming the option."""
    field, sep, raw = text.partition("=")
    field = field.strip()
    if not sep or not field or not raw.strip():
        raise SpecError(f"{option} {text!r}: expected FIELD=VALUE (e.g. objective.rho=0.2)")
    return field, raw


def yaml_value(raw: str, option: str, field: str) -> Any:
    """The text after `=` read as one YAML value (`3`, `[1, 4]`, `{name: dapo}`), or a SpecError."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise SpecError(f"{option} {field}: {raw!r} is not a valid YAML value: {err}") from None


def parse_settings(assignments: Sequence[str]) -> dict[str, Any]:
    """`--set` values: `schedule.steps=20`, `eval.pass_k=[1, 4]` (the whole value is one YAML value)."""
    settings: dict[str, Any] = {}
    for text in assignments:
        field, raw = parse_assignment(text, "--set")
        if field in settings:
            raise SpecError(f"--set: {field} is given twice")
        settings[field] = yaml_value(raw, "--set", field)
    return settings


def set_field(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested spec dict, creating the mappings on the way (validation comes after)."""
    parts = dotted.split(".")
    if not all(parts):
        raise SpecError(f"{dotted!r}: not a dotted spec field (e.g. objective.rho)")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise SpecError(f"{dotted!r}: {'.'.join(parts[:i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def get_field(data: dict[str, Any], dotted: str) -> Any:
    """The value at `a.b.c` in a nested spec dict, or None where a part is missing."""
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def load_spec_with_settings(path: str | Path, assignments: Sequence[str]) -> tuple[RLVRJobSpec, dict[str, Any]]:
    """The spec file with `--set` assignments applied, validated as a whole (a bad field fails here, naming
    it), and its JSON dump."""
    spec = load_spec(path)
    data = spec.model_dump(mode="json")
    if not assignments:
        return spec, data
    for field, value in parse_settings(assignments).items():
        set_field(data, field, value)
    return parse_spec(data, source=f"{path} with --set"), data
