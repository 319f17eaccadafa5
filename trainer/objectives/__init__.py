"""The entropy-aware objective library: DAPO, forking tokens (80/20), Archer, Clip-Cov, KL-Cov, GSPO, CISPO.

Pure torch; the Megatron learner calls `compute_policy_loss` once per micro-batch with a
`LossContext` from `mini_batch_context`. The configs are plain pydantic and import without torch (the
job spec, and so the operator, reads them); the torch parts load on first use.
"""

from importlib import import_module
from typing import Any

from forkrl.trainer.objectives.config import (
    ArcherConfig,
    CispoConfig,
    ClipCovConfig,
    DapoConfig,
    EntropyAdvantageConfig,
    ForkingConfig,
    GspoConfig,
    KlCovConfig,
    ObjectiveConfig,
    parse_objective,
)

# name -> submodule, imported on first attribute access (these need torch).
_LAZY = {
    "compute_policy_loss": "loss",
    "mini_batch_context": "normalizers",
    "LossContext": "types",
    "LossInputs": "types",
    "LossOutput": "types",
}

__all__ = [
    "ArcherConfig",
    "CispoConfig",
    "ClipCovConfig",
    "DapoConfig",
    "EntropyAdvantageConfig",
    "ForkingConfig",
    "GspoConfig",
    "KlCovConfig",
    "LossContext",
    "LossInputs",
    "LossOutput",
    "ObjectiveConfig",
    "compute_policy_loss",
    "mini_batch_context",
    "parse_objective",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"forkrl.trainer.objectives.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'forkrl.trainer.objectives' has no attribute {name!r}")
