"""A stand-in for the learner's last rank, run as its own process by the weight-sync tests.

    python -m tests.rollout.learner_process --url URL --seed S --version V --out OUT.json [--die-after K]

Builds the tiny float64 model with seed S (the "trained" weights), pushes it to the rollout server as
version V over gloo, then samples a fixed request from the server and records the server's sampling
log-probs next to its own log-softmax at the same tokens. With --die-after K it exits abruptly after
handing K tensors to the sender (a learner crashing half-way through a sync).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Iterator

import torch

from forkrl.rollout.client import RolloutClient, push_weights
from forkrl.rollout.tiny_model import TinyModelSpec, build_tiny_model
from forkrl.rollout.types import GenerateRequest

PROMPT = "What is 3+4?"


def fixed_request(tokenizer) -> GenerateRequest:
    return GenerateRequest(
        prompt_token_ids=tokenizer(PROMPT).input_ids, n=3, max_new_tokens=12, ignore_eos=True, seed=5
    )


def learner_logprobs(model, prompt: list[int], response: list[int]) -> list[float]:
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0].double()
    steps = logits[len(prompt) - 1 : -1].log_softmax(-1)
    return steps.gather(1, torch.tensor(response).unsqueeze(1)).squeeze(1).tolist()


def _dying(named: Iterator[tuple[str, torch.Tensor]], after: int) -> Iterator[tuple[str, torch.Tensor]]:
    for index, item in enumerate(named):
        if index == after:
            os._exit(3)
        yield item


async def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    model, tokenizer = build_tiny_model(TinyModelSpec(seed=args.seed, dtype="float64"))
    weights = model.named_parameters()
    if args.die_after is not None:
        weights = _dying(weights, args.die_after)
    async with RolloutClient(args.url, max_retries=2, backoff_s=0.2) as client:
        before = (await client.readyz()).weight_version
        stats = await push_weights([client], weights, args.version, master_addr="127.0.0.1",
                                   bucket_bytes=args.bucket_bytes, timeout_s=60)
        after = (await client.readyz()).weight_version
        request = fixed_request(tokenizer)
        (result,) = await client.generate([request])
    record = {
        "version_before": before,
        "version_after": after,
        "sent_tensors": stats.num_tensors,
        "samples": [
            {
                "token_ids": sample.token_ids,
                "server_logprobs": sample.logprobs,
                "learner_logprobs": learner_logprobs(model, request.prompt_token_ids, sample.token_ids),
                "weight_version": sample.weight_version,
            }
            for sample in result.samples
        ],
    }
    with open(args.out, "w") as handle:
        json.dump(record, handle)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--die-after", type=int, default=None)
    parser.add_argument("--bucket-bytes", type=int, default=1)
    asyncio.run(main(parser.parse_args()))
