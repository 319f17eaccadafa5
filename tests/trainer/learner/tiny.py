"""Tiny random Hugging Face models, batches and an independent reference for the learner tests.

Everything the learner is compared against is computed here, in the test process, with
`transformers` and the objective library; nothing goes through megatron.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import transformers

from forkrl.trainer.learner.batch import LearnerBatch

VOCAB = 128


def tiny_config(family: str, layers: int = 4, tie: bool = False) -> transformers.PretrainedConfig:
    """hidden 64, 4 heads (2 KV heads: GQA), vocab 128; Qwen3 with head_dim 32 != hidden / heads."""
    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
        initializer_range=0.2,
        rms_norm_eps=1e-6,
    )
    if family == "qwen2":
        return transformers.Qwen2Config(rope_theta=5000.0, **common)
    if family == "qwen3":
        return transformers.Qwen3Config(head_dim=32, rope_theta=20000.0, **common)
    if family == "llama":
        return transformers.LlamaConfig(rope_theta=10000.0, **common)
    raise ValueError(family)


def save_tiny_model(path: Path, family: str, layers: int = 4, tie: bool = False, seed: int = 0) -> torch.nn.Module:
    """Random fp32 model (norm weights and biases perturbed so they matter), saved as safetensors."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(family, layers, tie), dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(0.2 * torch.randn_like(param))
    model.save_pretrained(path, safe_serialization=True)
    return model.eval()


def make_batch(seed: int, batch: int = 8, width: int = 24) -> LearnerBatch:
    """Right-padded prompt+response rows of varied lengths; GRPO-like +-1 advantages per sequence."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (batch, width), generator=gen)
    seq_lens = torch.randint(width // 2, width + 1, (batch,), generator=gen)
    prompt_lens = torch.randint(2, 8, (batch,), generator=gen)
    positions = torch.arange(width)
    response = (positions >= prompt_lens[:, None]) & (positions < seq_lens[:, None])
    input_ids = torch.where(positions < seq_lens[:, None], input_ids, 0)
    signs = torch.where(torch.rand(batch, generator=gen) < 0.5, -1.0, 1.0)
    advantages = signs[:, None] * response
    return LearnerBatch(
        input_ids=input_ids, seq_lens=seq_lens, response_mask=response.float(), advantages=advantages.float()
    )


@torch.no_grad()
def hf_token_stats(model: torch.nn.Module, batch: LearnerBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-aligned (logp, entropy) [B, S] in float64 from the transformers model (0 off the response)."""
    attention = (torch.arange(batch.input_ids.shape[1])[None] < batch.seq_lens[:, None]).long()
    logits = model(input_ids=batch.input_ids, attention_mask=attention).logits.double()
    logprobs = torch.log_softmax(logits, dim=-1)[:, :-1]
    logp = torch.zeros(batch.input_ids.shape, dtype=torch.float64)
    entropy = torch.zeros_like(logp)
    logp[:, 1:] = logprobs.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    entropy[:, 1:] = -(logprobs.exp() * logprobs).sum(-1)
    mask = batch.response_mask.double()
    return logp * mask, entropy * mask


def with_old_logp(batch: LearnerBatch, logp: torch.Tensor, seed: int, noise: float = 0.3) -> LearnerBatch:
    """The batch with old log-probs = current ones + noise, so ratios are off 1 and some tokens clip."""
    gen = torch.Generator().manual_seed(seed)
    old = (logp + noise * torch.randn(logp.shape, generator=gen, dtype=torch.float64)) * batch.response_mask
    return dataclasses.replace(batch, old_logp=old.float())
