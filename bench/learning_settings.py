"""The settings that change what an RL run learns, read from each trainer's own configuration, and the check
that two arms of `bench/learning.py` agree on every one of them.

Each arm's record is derived from the object that arm really runs with (forkrl's `RLVRJobSpec`, TRL's
`GRPOConfig`), and its learning-rate sequence comes from that trainer's own scheduler (megatron-core's
`OptimizerParamScheduler`, transformers' `get_scheduler`), so a default that differs cannot hide behind a
field with the same name.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

# Relative tolerance on the learning rate at each update (the schedules are computed, not copied).
LR_TOLERANCE = 1e-6
# Printed, never enforced. The epsilon added to a group's reward std (forkrl 1e-6, TRL 1e-4) only matters for
# groups whose std is below ~1e-3, which binary rewards never produce (a group's std is 0 or >= 0.35). The
# schedule's name differs between libraries (`constant` vs `constant_with_warmup`); `lr_per_update` is the
# enforced comparison of what the two schedules do.
INFORMATIONAL = ("advantage_std_eps", "lr_schedule")


@dataclass(frozen=True)
class LearningSettings:
    """What one arm trains with. Counts are per RL step unless named otherwise."""

    steps: int
    prompts_per_step: int
    samples_per_prompt: int
    updates_per_step: int
    passes_per_batch: int
    peak_lr: float
    warmup_updates: int
    lr_schedule: str
    lr_per_update: tuple[float, ...]
    weight_decay: float
    adam_betas: tuple[float, float]
    adam_eps: float
    grad_clip: float
    clip_low: float
    clip_high: float
    kl_beta: float
    loss_aggregation: str
    entropy_top_fraction: float
    entropy_selection_rows: int
    advantage: str
    advantage_std_eps: float
    temperature: float
    top_p: float
    top_k: int
    max_response_tokens: int
    dynamic_sampling: bool
    overlong_shaping: bool
    mask_truncated: bool

    def rows(self) -> list[tuple[str, str]]:
        """(name, value) for printing; the LR sequence is summarised."""
        out = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "lr_per_update":
                quarter = len(value) // 4
                picks = (0, 1, quarter, 2 * quarter, 3 * quarter, len(value) - 1)
                value = f"{len(value)} updates: " + ", ".join(f"{value[i]:.3g}" for i in picks)
            out.append((field.name, str(value)))
        return out


def differences(a: LearningSettings, b: LearningSettings) -> list[str]:
    """Every enforced setting on which `a` and `b` differ, as readable lines (empty when matched)."""
    lines = []
    for field in dataclasses.fields(LearningSettings):
        name = field.name
        if name in INFORMATIONAL:
            continue
        left, right = getattr(a, name), getattr(b, name)
        if name == "lr_per_update":
            if len(left) != len(right):
                lines.append(f"lr_per_update: {len(left)} updates vs {len(right)}")
                continue
            gap, i = max((abs(x - y) / max(abs(x), abs(y), 1e-30), i)
                         for i, (x, y) in enumerate(zip(left, right, strict=True)))
            if gap > LR_TOLERANCE:
                lines.append(f"lr_per_update: update {i} has {left[i]:.6g} vs {right[i]:.6g}")
        elif isinstance(left, float) and isinstance(right, float):
            if not math.isclose(left, right, rel_tol=1e-9, abs_tol=1e-12):
                lines.append(f"{name}: {left!r} vs {right!r}")
        elif left != right:
            lines.append(f"{name}: {left!r} vs {right!r}")
    return lines


def megatron_lr_sequence(optimizer_spec: Any, updates: int) -> tuple[float, ...]:
    """The learning rate of each optimizer update under forkrl's learner schedule (the learner's own
    megatron-core scheduler, on a throwaway parameter)."""
    from forkrl.trainer.learner.optimizer import build_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=optimizer_spec.lr)
    scheduler = build_scheduler(optimizer, optimizer_spec)
    sequence = []
    for _ in range(updates):
        sequence.append(float(optimizer.param_groups[0]["lr"]))
        scheduler.step(increment=1)
    return tuple(sequence)


def transformers_lr_sequence(name: str, peak: float, warmup: int, total: int) -> tuple[float, ...]:
    """The learning rate of each optimizer update under a transformers scheduler (what the HF Trainer builds)."""
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    sequence = []
    for _ in range(total):
        sequence.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()
        scheduler.step()
    return tuple(sequence)


def forkrl_settings(spec: Any) -> LearningSettings:
    """The settings of a forkrl run, from its parsed `RLVRJobSpec`."""
    schedule, objective, opt = spec.schedule, spec.objective, spec.learner.optimizer
    updates_per_step = schedule.train_batch_size // schedule.mini_batch_size
    if objective.name not in ("forking", "dapo"):
        raise ValueError(f"bench/learning.py compares DAPO-family objectives; the spec uses {objective.name!r}")
    if objective.loss_agg != "token-mean":
        raise ValueError(f"objective.loss_agg={objective.loss_agg!r}: TRL's dapo loss is a token mean")
    rho = objective.rho if objective.name == "forking" else 1.0
    if objective.name == "forking" and objective.scope != "micro_batch":
        raise ValueError("objective.scope must be micro_batch: TRL selects high-entropy tokens per micro-batch")
    aggregation = ("token mean over the update" if objective.token_mean_scope == "global"
                   else "token mean per micro-batch")
    sampling = spec.rollout.sampling
    return LearningSettings(
        steps=schedule.steps,
        prompts_per_step=schedule.train_batch_size,
        samples_per_prompt=schedule.samples_per_prompt,
        updates_per_step=updates_per_step,
        passes_per_batch=schedule.epochs,
        peak_lr=opt.lr,
        warmup_updates=opt.warmup_steps,
        lr_schedule=opt.decay_style,
        lr_per_update=megatron_lr_sequence(opt, schedule.steps * updates_per_step * schedule.epochs),
        weight_decay=opt.weight_decay,
        adam_betas=(opt.adam_beta1, opt.adam_beta2),
        adam_eps=opt.adam_eps,
        grad_clip=opt.clip_grad,
        clip_low=objective.clip_eps_low,
        clip_high=objective.clip_eps_high,
        kl_beta=0.0,  # forking and dapo have no KL term
        loss_aggregation=aggregation,
        entropy_top_fraction=rho,
        entropy_selection_rows=spec.learner.micro_batch.micro_batch_size if rho < 1.0 else 0,
        advantage="(r - group mean) / (unbiased group std + eps)",
        advantage_std_eps=1e-6,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=max(sampling.top_k or 0, 0),
        max_response_tokens=spec.model.max_response_tokens,
        dynamic_sampling=spec.dynamic_sampling.enabled,
        overlong_shaping=spec.overlong.enabled,
        mask_truncated=False,
    )


def trl_settings(config: Any, steps: int) -> LearningSettings:
    """The settings of a TRL `GRPOTrainer` run, from its `GRPOConfig` (one process)."""
    generation = config.per_device_train_batch_size * config.steps_per_generation
    updates_per_step = config.steps_per_generation // config.gradient_accumulation_steps
    if config.scale_rewards not in ("group", True):
        raise ValueError(f"GRPOConfig.scale_rewards={config.scale_rewards!r}: forkrl scales by the group std")
    if config.loss_type != "dapo":
        raise ValueError(f"GRPOConfig.loss_type={config.loss_type!r}: forkrl's dapo/forking loss is a token mean")
    total = steps * updates_per_step * config.num_iterations
    schedule_name = str(getattr(config.lr_scheduler_type, "value", config.lr_scheduler_type))
    return LearningSettings(
        steps=steps,
        prompts_per_step=generation // config.num_generations,
        samples_per_prompt=config.num_generations,
        updates_per_step=updates_per_step,
        passes_per_batch=config.num_iterations,
        peak_lr=config.learning_rate,
        warmup_updates=config.warmup_steps,
        lr_schedule=schedule_name,
        lr_per_update=transformers_lr_sequence(schedule_name, config.learning_rate, config.warmup_steps, total),
        weight_decay=config.weight_decay,
        adam_betas=(config.adam_beta1, config.adam_beta2),
        adam_eps=config.adam_epsilon,
        grad_clip=config.max_grad_norm,
        clip_low=config.epsilon,
        clip_high=config.epsilon_high if config.epsilon_high is not None else config.epsilon,
        kl_beta=config.beta,
        # TRL divides by the generation's response tokens / updates per generation, forkrl by the update's own
        # response tokens: the same normaliser in expectation over the shuffled updates of one generation.
        loss_aggregation="token mean over the update",
        entropy_top_fraction=config.top_entropy_quantile,
        entropy_selection_rows=config.per_device_train_batch_size if config.top_entropy_quantile < 1.0 else 0,
        advantage="(r - group mean) / (unbiased group std + eps)",
        advantage_std_eps=1e-4,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k or 0,
        max_response_tokens=config.max_completion_length,
        dynamic_sampling=False,  # GRPOTrainer trains on every group
        overlong_shaping=False,  # only through an extra reward function, which the bench does not add
        mask_truncated=config.mask_truncated_completions,
    )
