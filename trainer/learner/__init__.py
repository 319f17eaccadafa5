"""Megatron learner: TP x PP x DP policy training with the entropy-aware objectives.

    from forkrl.trainer.learner import Learner, LearnerSpec, LearnerBatch
    learner = Learner(spec, objective, model_path="/models/Qwen2.5-7B")   # on every rank
    stats = learner.compute_logprobs(batch)          # TokenStats(logp, entropy), [B, S]
    metrics = learner.train_step(batch)              # one optimizer step on the global mini-batch
    for name, tensor in learner.export_weights(): ...  # HF names, streamed
    learner.save(path, data_state); learner.load(path)

The configs are plain pydantic and import without torch (the operator reads them through the job spec);
`LearnerBatch` (torch) and `Learner` (megatron) load on first use.
"""

from typing import Any

from forkrl.trainer.learner.config import (
    LearnerSpec,
    MicroBatchSpec,
    OptimizerSpec,
    ParallelConfig,
    ReferenceSpec,
)

__all__ = [
    "Learner",
    "LearnerBatch",
    "LearnerSpec",
    "MicroBatchSpec",
    "OptimizerSpec",
    "ParallelConfig",
    "ReferenceSpec",
    "TokenStats",
]


def __getattr__(name: str) -> Any:
    if name == "LearnerBatch":
        from forkrl.trainer.learner.batch import LearnerBatch

        return LearnerBatch
    if name in ("Learner", "TokenStats"):
        from forkrl.trainer.learner import learner

        return getattr(learner, name)
    raise AttributeError(f"module 'forkrl.trainer.learner' has no attribute {name!r}")
