"""The TRL arm of `bench/learning.py`: `GRPOTrainer` configured from the forkrl spec it is compared with,
on the same prompts in the same order, rewarded by the same verifier function.

TRL is a bench-only dependency (the `bench` extra), imported here and nowhere in forkrl."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from learning_eval import reward_of

from forkrl.trainer.data.schema import PromptRow


@dataclass(frozen=True)
class TrlRun:
    final_model: Path
    rl_seconds: float
    generated_tokens: int
    config: Any  # trl.GRPOConfig (TRL is imported only when the arm runs)


def grpo_config(spec: Any, seed: int, output_dir: Path) -> Any:
    """A `GRPOConfig` that trains as `spec` does: one generation of train_batch_size x n completions per RL
    step, split into micro-batches of forkrl's micro-batch size, with one optimizer update per forkrl
    mini-batch."""
    from trl import GRPOConfig

    schedule, opt, objective = spec.schedule, spec.learner.optimizer, spec.objective
    n = schedule.samples_per_prompt
    micro = spec.learner.micro_batch.micro_batch_size
    update, generation = schedule.mini_batch_size * n, schedule.train_batch_size * n
    if update % micro or generation % micro:
        raise ValueError(f"micro-batch size {micro} must divide the update ({update}) and the generation "
                         f"({generation}) in completions")
    # HF schedules decay over the whole run; a forkrl decay_steps that differs shows in the LR of each update,
    # which learning_settings.differences compares.
    schedule_name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[opt.decay_style]
    sampling = spec.rollout.sampling
    return GRPOConfig(
        output_dir=str(output_dir),
        seed=seed,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        logging_steps=max(1, schedule.train_batch_size // schedule.mini_batch_size),
        disable_tqdm=True,
        shuffle_dataset=False,  # the prompts arrive in forkrl's stream order
        max_steps=schedule.steps * (generation // update) * schedule.epochs,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=update // micro,
        steps_per_generation=generation // micro,
        num_generations=n,
        num_iterations=schedule.epochs,
        max_completion_length=spec.model.max_response_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=max(sampling.top_k or 0, 0),
        learning_rate=opt.lr,
        lr_scheduler_type=schedule_name,
        warmup_steps=opt.warmup_steps,
        weight_decay=opt.weight_decay,
        adam_beta1=opt.adam_beta1,
        adam_beta2=opt.adam_beta2,
        adam_epsilon=opt.adam_eps,
        max_grad_norm=opt.clip_grad,
        epsilon=objective.clip_eps_low,
        epsilon_high=objective.clip_eps_high,
        beta=0.0,
        loss_type="dapo",
        scale_rewards="group",
        top_entropy_quantile=objective.rho if objective.name == "forking" else 1.0,
        mask_truncated_completions=False,
        log_completions=False,
    )


def boxed_reward(completions: Sequence[str], answer: Sequence[str], **_: Any) -> list[float]:
    """TRL reward function: forkrl's verifier reward of each completion against its row's answer."""
    return [reward_of(text, gold) for text, gold in zip(completions, answer, strict=True)]


def run_trl(model_dir: Path, prompts: Sequence[str], rows: Sequence[PromptRow], spec: Any, seed: int,
            out_dir: Path, expected_ids: Sequence[list[int]]) -> TrlRun:
    """Train with TRL from `model_dir` on `prompts` (already rendered, in the order forkrl takes them)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # TRL tokenizes plain-text prompts itself: they must be the token ids forkrl's rollout sends.
    for text, ids in zip(prompts[:32], expected_ids[:32], strict=False):
        got = tokenizer(text=text)["input_ids"]
        if got != ids:
            raise RuntimeError(f"TRL would tokenize {text!r} as {got}, forkrl sends {ids}")
    config = grpo_config(spec, seed, out_dir / "trl")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    dataset = Dataset.from_dict({"prompt": list(prompts), "answer": [row.answer for row in rows]})
    trainer = GRPOTrainer(model=model, reward_funcs=[boxed_reward], args=config, train_dataset=dataset,
                          processing_class=tokenizer)
    start = time.monotonic()
    trainer.train()
    rl_seconds = time.monotonic() - start
    final = out_dir / "final_model"
    trainer.save_model(str(final))
    tokenizer.save_pretrained(str(final))
    # One log per generation (logging_steps = updates per generation), each with that generation's mean length.
    per_generation = spec.schedule.train_batch_size * spec.schedule.samples_per_prompt
    lengths = [entry["completions/mean_length"] for entry in trainer.state.log_history
               if "completions/mean_length" in entry]
    if len(lengths) != spec.schedule.steps:
        raise RuntimeError(f"expected one TRL log per generation ({spec.schedule.steps}), got {len(lengths)}")
    return TrlRun(final, rl_seconds, round(sum(lengths) * per_generation), config)
