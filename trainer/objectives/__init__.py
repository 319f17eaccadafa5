"""The entropy-aware objective library: DAPO, forking tokens (80/20), Archer, Clip-Cov, KL-Cov, GSPO, CISPO.

Pure torch; the Megatron learner calls `compute_policy_loss` once per micro-batch with a
`LossContext` from `mini_batch_context`.
"""

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
from forkrl.trainer.objectives.loss import compute_policy_loss
from forkrl.trainer.objectives.normalizers import mini_batch_context
from forkrl.trainer.objectives.types import LossContext, LossInputs, LossOutput

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
