"""The arms of a comparison or a sweep: one base spec, a few fields changed per arm, several seeds each.

An arm is (label, overrides, seed). `compare` arms replace the objective with one of OBJECTIVE_PRESETS;
`sweep` arms set dotted spec fields to every combination of a grid. Everything else (schedule, batch,
samples per prompt, updates, sampling, learning-rate schedule, evaluation) is the base spec's, so every
arm gets the same compute; `COMPUTE_FIELDS` lists those settings for the report to check and print.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from forkrl.trainer.spec import RLVRJobSpec, SpecError, parse_spec
from forkrl.trainer.spec.overrides import get_field, parse_assignment, set_field, yaml_value

OBJECTIVE_PRESETS: dict[str, dict[str, Any]] = {
    "dapo": {"name": "dapo"},
    "forking-top20": {"name": "forking", "rho": 0.2},
    "forking-top10": {"name": "forking", "rho": 0.1},
    "forking-top50": {"name": "forking", "rho": 0.5},
    "forking-bottom80": {"name": "forking", "rho": 0.8, "select": "bottom"},
    "archer": {"name": "archer"},
    "entropy-advantage": {"name": "dapo", "entropy_advantage": {"alpha": 0.4, "kappa": 2.0}},
}
"""The objectives the papers compare (objectives.md sections 3-4), each at its paper defaults."""

DEFAULT_COMPARE = tuple(OBJECTIVE_PRESETS)

COMPUTE_FIELDS = ("schedule", "rollout.sampling", "model.max_response_tokens", "learner.optimizer",
                  "dynamic_sampling", "eval")
"""Spec sections that decide how much an arm generates and trains on, and how it is scored."""


@dataclass(frozen=True, eq=False)  # hashed by identity: override values may be dicts
class Arm:
    """One training run of an experiment: `label` names its group (the seeds of one setting)."""

    label: str
    overrides: tuple[tuple[str, Any], ...]
    """(dotted spec field, value), applied in order to the base spec."""
    seed: int

    @property
    def key(self) -> str:
        """Its folder under <workdir>/arms: readable, and safe as a path component."""
        return f"{_slug(self.label)}/seed{self.seed}"

    @property
    def run_name(self) -> str:
        """Its spec name (<= 52 characters of [a-z0-9-]): a short hash of the label keeps arms distinct."""
        digest = hashlib.sha256(self.label.encode()).hexdigest()[:6]
        return f"{_slug(self.label)[:30].strip('-')}-{digest}-s{self.seed}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "arm"


def arm_spec_data(base: dict[str, Any], arm: Arm) -> dict[str, Any]:
    """The base spec (a validated spec's JSON dump) with the arm's fields and seed set."""
    data = copy.deepcopy(base)
    for dotted, value in arm.overrides:
        set_field(data, dotted, copy.deepcopy(value))
    data["seed"] = arm.seed
    data["name"] = arm.run_name
    return data


def validate_arms(base: dict[str, Any], arms: Sequence[Arm]) -> dict[Arm, RLVRJobSpec]:
    """Every arm's spec, validated before anything runs: one error lists every bad arm and field."""
    specs: dict[Arm, RLVRJobSpec] = {}
    errors: list[str] = []
    for arm in arms:
        try:
            specs[arm] = parse_spec(arm_spec_data(base, arm), source=f"arm {arm.label!r} (seed {arm.seed})")
        except SpecError as err:
            errors.append(str(err))
    if errors:
        raise SpecError("\n".join(dict.fromkeys(errors)))
    return specs


def compare_arms(objectives: Sequence[str], seeds: Sequence[int]) -> list[Arm]:
    """One arm per (objective preset, seed), objectives in the order given."""
    unknown = [name for name in objectives if name not in OBJECTIVE_PRESETS]
    if unknown:
        raise SpecError(f"--objectives: unknown {', '.join(unknown)}; choose from {', '.join(OBJECTIVE_PRESETS)}")
    if len(set(objectives)) != len(objectives):
        raise SpecError("--objectives: an objective is listed twice")
    return [Arm(name, (("objective", OBJECTIVE_PRESETS[name]),), seed) for name in objectives for seed in seeds]


def parse_grid(assignments: Sequence[str]) -> dict[str, list[Any]]:
    """`objective.rho=0.1,0.2,0.5` -> {"objective.rho": [0.1, 0.2, 0.5]}; values are YAML scalars."""
    grid: dict[str, list[Any]] = {}
    for text in assignments:
        field, raw = parse_assignment(text, "--grid")
        if field in grid:
            raise SpecError(f"--grid: {field} is given twice")
        values = [yaml_value(v, "--grid", field) for v in raw.split(",")]
        if len(set(map(repr, values))) != len(values):
            raise SpecError(f"--grid {field}: a value is listed twice")
        grid[field] = values
    if not grid:
        raise SpecError("sweep: give at least one --grid FIELD=V1,V2,...")
    return grid


def sweep_arms(grid: dict[str, list[Any]], seeds: Sequence[int]) -> list[Arm]:
    """One arm per point of the grid's cartesian product and seed; labels read `rho=0.1 eps_reasoning_high=0.5`."""
    fields = list(grid)
    arms = []
    for point in itertools.product(*(grid[f] for f in fields)):
        label = " ".join(f"{f}={v}" for f, v in zip(fields, point, strict=True))
        overrides = tuple(zip(fields, point, strict=True))
        arms.extend(Arm(label, overrides, seed) for seed in seeds)
    return arms


def compute_settings(spec: RLVRJobSpec) -> dict[str, Any]:
    """The settings that decide an arm's compute and scoring (COMPUTE_FIELDS), as JSON values."""
    dump = spec.model_dump(mode="json")
    return {field: get_field(dump, field) for field in COMPUTE_FIELDS}


def is_swept(section: str, swept: Sequence[str]) -> bool:
    """Whether a sweep sets `section` or a field inside it (or a section containing it)."""
    return any(s.startswith(section) or section.startswith(s) for s in swept)


def unequal_compute(specs: dict[Arm, RLVRJobSpec], swept: Sequence[str] = ()) -> list[str]:
    """COMPUTE_FIELDS that differ between arms, except those the sweep sets on purpose."""
    settings = [compute_settings(spec) for spec in specs.values()]
    differing = []
    for field in COMPUTE_FIELDS:
        if is_swept(field, swept):
            continue
        if len({yaml.safe_dump(s[field], sort_keys=True) for s in settings}) > 1:
            differing.append(field)
    return differing
