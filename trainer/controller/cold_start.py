"""Supervised cold start: teach a fresh policy the answer format on worked solutions before RL.

Without it a randomly initialised policy never produces a correct `\\boxed{}` answer, every GRPO group
is constant and RL has no signal. The result is saved as a Hugging Face checkpoint that both the learner
(import) and the rollout engines (load) start from.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from forkrl.rollout.weight_checkpoint import make_files_readable
from forkrl.trainer.data.schema import PromptRow


def sft_examples(rows: Sequence[PromptRow], render: Callable[[PromptRow], str], tokenizer: Any,
                 ) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, target ids + EOS) for every row with a worked solution in metadata['solution']."""
    examples = []
    for row in rows:
        solution = row.metadata.get("solution")
        if not solution:
            continue
        prompt = tokenizer(render(row), add_special_tokens=False)["input_ids"]
        target = tokenizer(solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        examples.append((prompt, target))
    if not examples:
        raise ValueError("cold start: no row carries metadata['solution'] (a worked solution to imitate)")
    return examples


def collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids/attention_mask and labels that are -100 outside the targets."""
    width = max(len(p) + len(t) for p, t in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (prompt, target) in enumerate(examples):
        ids = prompt + target
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, len(prompt) : len(ids)] = torch.tensor(target)
        attention[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def run_cold_start(model: torch.nn.Module, examples: Sequence[tuple[list[int], list[int]]], pad_id: int,
                   steps: int, batch_size: int, lr: float, seed: int,
                   log: Callable[[str], None] = print) -> list[float]:
    """Adam on the next-token loss of the targets; returns the loss per step. Deterministic given `seed`."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 20) *
                                                 max(0.1, 1 - s / max(steps, 1)))
    model.train()
    losses = []
    start = time.monotonic()
    for step in range(steps):
        batch = collate(rng.sample(list(examples), min(batch_size, len(examples))), pad_id)
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
            log(f"cold start {step + 1}/{steps}: loss {sum(losses[-10:]) / len(losses[-10:]):.4f} "
                f"({time.monotonic() - start:.0f}s)")
    model.eval()
    return losses


def save_checkpoint(model: Any, tokenizer: Any, path: Path) -> Path:
    """Hugging Face layout (config.json, model.safetensors, tokenizer files)."""
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    make_files_readable(path)  # rollout replicas and learner pods may read it as another user
    return path
