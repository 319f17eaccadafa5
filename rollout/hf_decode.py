"""The batched decoding loop of `HFEngine`: one left-padded batch with a KV cache.

A chunk holds whole or partial requests. Each distinct prompt is prefilled once and its KV cache is
repeated for its samples (the HF analogue of vLLM's prefix caching for the `n` samples of a prompt);
then all rows decode together. Finished rows are dropped from the batch (and the cache) once a quarter
of the batch has finished, so long samples do not carry short ones.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel

from forkrl.rollout.sampling import ResolvedSampling, RowSampling, sample_step, stream_keys
from forkrl.rollout.types import FinishReason, GenerateRequest, SampleResult


@dataclass
class ChunkEntry:
    """Samples [start, start + count) of request `request_index`."""

    request_index: int
    start: int
    count: int


def plan_chunks(requests: list[GenerateRequest], max_rows: int) -> list[list[ChunkEntry]]:
    """Packs all samples of all requests into chunks of at most `max_rows` rows, in request order."""
    chunks: list[list[ChunkEntry]] = [[]]
    free = max_rows
    for index, request in enumerate(requests):
        start = 0
        while start < request.n:
            if free == 0:
                chunks.append([])
                free = max_rows
            count = min(free, request.n - start)
            chunks[-1].append(ChunkEntry(index, start, count))
            start += count
            free -= count
    return [chunk for chunk in chunks if chunk]


@dataclass
class RequestPlan:
    """What the decoding loop needs to know about one request."""

    request: GenerateRequest
    seed: int
    sampling: ResolvedSampling
    stop_ids: list[int]
    samples: list[SampleResult | None] = field(default_factory=list)


@dataclass
class DecodeContext:
    model: PreTrainedModel
    device: torch.device
    weight_version: int
    pad_token_id: int
    compact_fraction: float
    abort: threading.Event | None
    on_sample: Callable[[int, int, SampleResult], None]
    """(request index, sample index, sample) as soon as a sample finishes."""
    on_phase: Callable[[str, float], None]
    on_kv_tokens: Callable[[int], None]


def _prefill(
    ctx: DecodeContext, prompts: list[list[int]]
) -> tuple[torch.Tensor, DynamicCache, torch.Tensor, torch.Tensor]:
    """Left-padded prefill. Returns (last logits [E, V], cache, attention mask [E, P], lengths [E])."""
    lengths = torch.tensor([len(p) for p in prompts], dtype=torch.int64, device=ctx.device)
    width = int(lengths.max())
    input_ids = torch.full((len(prompts), width), ctx.pad_token_id, dtype=torch.int64, device=ctx.device)
    mask = torch.zeros((len(prompts), width), dtype=torch.int64, device=ctx.device)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.int64)
        mask[row, width - len(prompt) :] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    cache = DynamicCache(config=ctx.model.config)
    out = ctx.model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[:, -1, :], out.past_key_values, mask, lengths


@torch.inference_mode()
def decode_chunk(ctx: DecodeContext, chunk: list[ChunkEntry], plans: list[RequestPlan]) -> None:
    """Generates every sample of `chunk`, reporting each through `ctx.on_sample`."""
    started = time.perf_counter()
    prompts = [list(plans[e.request_index].request.prompt_token_ids) for e in chunk]
    logits, cache, mask, prompt_lengths = _prefill(ctx, prompts)
    ctx.on_phase("prefill", time.perf_counter() - started)
    started = time.perf_counter()

    counts = torch.tensor([e.count for e in chunk], device=ctx.device)
    entry_of_row = torch.repeat_interleave(torch.arange(len(chunk), device=ctx.device), counts)
    cache.batch_select_indices(entry_of_row)
    logits, mask = logits[entry_of_row], mask[entry_of_row]
    positions = prompt_lengths[entry_of_row]

    row_request, row_sample, resolved, keys, max_new, stops = [], [], [], [], [], []
    for entry in chunk:
        plan = plans[entry.request_index]
        sample_indices = list(range(entry.start, entry.start + entry.count))
        row_request += [entry.request_index] * entry.count
        row_sample += sample_indices
        resolved += [plan.sampling] * entry.count
        keys.append(stream_keys(plan.seed, sample_indices))
        max_new += [plan.request.max_new_tokens] * entry.count
        stops += [plan.stop_ids] * entry.count
    num_rows = len(row_request)
    rows = RowSampling.build(resolved, np.concatenate(keys), ctx.device)
    max_new_t = torch.tensor(max_new, dtype=torch.int64, device=ctx.device)
    stop_width = max(1, max(len(s) for s in stops))
    stop_ids = torch.full((num_rows, stop_width), -1, dtype=torch.int64, device=ctx.device)
    for row, ids in enumerate(stops):
        stop_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)

    steps = int(max_new_t.max())
    tokens_out = torch.zeros((num_rows, steps), dtype=torch.int64)
    logprobs_out = torch.zeros((num_rows, steps), dtype=torch.float32)
    high_out = torch.zeros(num_rows, dtype=torch.int64)
    row_ids = torch.arange(num_rows, device=ctx.device)  # original row of each current batch row
    live = torch.ones(num_rows, dtype=torch.bool, device=ctx.device)

    def finish(current: torch.Tensor, length: int, reason: FinishReason) -> None:
        for original in row_ids[current].tolist():
            sample = SampleResult(
                token_ids=tokens_out[original, :length].tolist(),
                logprobs=logprobs_out[original, :length].tolist(),
                finish_reason=reason,
                weight_version=ctx.weight_version,
                num_high_temperature_tokens=int(high_out[original]),
            )
            ctx.on_sample(row_request[original], row_sample[original], sample)

    for step in range(steps):
        if ctx.abort is not None and ctx.abort.is_set():
            finish(live.nonzero().squeeze(1), step, "abort")
            break
        out = sample_step(logits, rows, step)
        rows.dual_rows.tau = out.next_tau
        current = live.nonzero().squeeze(1)
        original = row_ids[current].cpu()
        tokens_out[original, step] = out.tokens[current].cpu()
        logprobs_out[original, step] = out.logprobs[current].float().cpu()
        high_out[original] += out.high[current].cpu().to(torch.int64)

        stopped = (out.tokens.unsqueeze(1) == stop_ids).any(dim=1) & live
        at_length = (max_new_t <= step + 1) & live & ~stopped
        finish(stopped.nonzero().squeeze(1), step + 1, "stop")
        finish(at_length.nonzero().squeeze(1), step + 1, "length")
        live &= ~(stopped | at_length)
        if not bool(live.any()):
            break
        if float((~live).float().mean()) >= ctx.compact_fraction:
            keep = live.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows = rows.select(keep)
            mask, positions, row_ids = mask[keep], positions[keep], row_ids[keep]
            max_new_t, stop_ids, live = max_new_t[keep], stop_ids[keep], live[keep]
            next_tokens = out.tokens[keep]
        else:
            next_tokens = out.tokens
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        ctx.on_kv_tokens(int(mask.shape[0] * mask.shape[1]))
        logits = ctx.model(
            input_ids=next_tokens.unsqueeze(1),
            attention_mask=mask,
            position_ids=(positions + step).unsqueeze(1),
            past_key_values=cache,
            use_cache=True,
        ).logits[:, -1, :]
    ctx.on_kv_tokens(0)
    ctx.on_phase("decode", time.perf_counter() - started)
