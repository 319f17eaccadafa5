"""Rollout benchmark: HFEngine vs a plain per-prompt `model.generate` loop, and weight-sync cost.

    python bench/rollout.py [--prompts 64] [--n 8] [--max-new-tokens 64] [--threads 1]

Both generators (and the engine once more on transformers' own SDPA attention, which copies each
key/value head to its query heads: `HFEngineConfig.grouped_query_sdpa=False`)
run the same tiny Qwen2 model on the same prompts in this process, sampling at T = 1
and stopping at EOS or the token cap; throughput counts generated tokens (up to and including EOS).
The baseline calls `model.generate(..., num_return_sequences=n)` once per prompt. The weight sync runs
a real gloo broadcast on 127.0.0.1 from a sender to an HFEngine's receiver (begin -> send -> commit,
staging and install included), for the tiny model and a ~24M-parameter one. Target: engine >= 3x.
"""

from __future__ import annotations

import argparse
import copy
import random
import threading
import time

import torch

from forkrl.rollout.hf_engine import HFEngine, HFEngineConfig
from forkrl.rollout.tiny_model import TinyModelSpec, build_tiny_model
from forkrl.rollout.types import GenerateRequest
from forkrl.rollout.weight_sync import WeightSender

TARGET_SPEEDUP = 3.0


def arithmetic_prompts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.randint(1, 99)}+{rng.randint(1, 99)}*{rng.randint(1, 9)}=" for _ in range(count)]


def generated_tokens(sequence: list[int], eos: int) -> int:
    return sequence.index(eos) + 1 if eos in sequence else len(sequence)


def bench_plain_loop(model, prompts: list[list[int]], n: int, max_new: int, eos: int, pad: int) -> tuple[int, float]:
    start = time.perf_counter()
    tokens = 0
    with torch.inference_mode():
        for prompt in prompts:
            out = model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones((1, len(prompt)), dtype=torch.int64),
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                num_return_sequences=n,
                max_new_tokens=max_new,
                eos_token_id=eos,
                pad_token_id=pad,
            )
            tokens += sum(generated_tokens(row[len(prompt) :].tolist(), eos) for row in out)
    return tokens, time.perf_counter() - start


def bench_engine(model, prompts: list[list[int]], n: int, max_new: int, grouped_query_sdpa: bool = True
                 ) -> tuple[int, float]:
    config = HFEngineConfig(max_batch_size=len(prompts) * n, grouped_query_sdpa=grouped_query_sdpa)
    engine = HFEngine(copy.deepcopy(model), config=config)
    requests = [GenerateRequest(prompt_token_ids=p, n=n, max_new_tokens=max_new, seed=i) for i, p in enumerate(prompts)]
    start = time.perf_counter()
    results = engine.generate(requests)
    seconds = time.perf_counter() - start
    return sum(len(s.token_ids) for r in results for s in r.samples), seconds


def bench_weight_sync(spec: TinyModelSpec, repeats: int = 3) -> tuple[int, float]:
    """Best of `repeats` begin -> send -> commit cycles; returns (parameters, seconds)."""
    receiver_model, _ = build_tiny_model(spec)
    learner, _ = build_tiny_model(spec.model_copy(update={"seed": spec.seed + 1}))
    engine = HFEngine(receiver_model)
    params = sum(p.numel() for p in learner.parameters())
    best = float("inf")
    for version in range(1, repeats + 1):
        start = time.perf_counter()
        sender = WeightSender(master_addr="127.0.0.1", timeout_s=120)
        engine.begin_weight_sync(sender.begin_request(version=version, rank_offset=1, world_size=2))
        sending = threading.Thread(target=sender.send, args=(learner.named_parameters(), version, 2))
        sending.start()
        sending.join()
        engine.commit_weight_sync(version, timeout_s=120)
        best = min(best, time.perf_counter() - start)
        sender.close()
    assert torch.equal(receiver_model.state_dict()["lm_head.weight"], learner.state_dict()["lm_head.weight"])
    return params, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for both generators")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model, tokenizer = build_tiny_model()
    prompts = [tokenizer(text).input_ids for text in arithmetic_prompts(args.prompts)]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    bench_engine(model, prompts[:2], 2, 4)  # warm-up every timed path
    bench_engine(model, prompts[:2], 2, 4, grouped_query_sdpa=False)
    bench_plain_loop(model, prompts[:1], 2, 4, eos, pad)
    plain_tokens, plain_seconds = bench_plain_loop(model, prompts, args.n, args.max_new_tokens, eos, pad)
    engine_tokens, engine_seconds = bench_engine(model, prompts, args.n, args.max_new_tokens)
    repeat_tokens, repeat_seconds = bench_engine(model, prompts, args.n, args.max_new_tokens, False)
    assert repeat_tokens == engine_tokens, "the attention implementations sampled different tokens"
    plain_rate, engine_rate = plain_tokens / plain_seconds, engine_tokens / engine_seconds
    speedup = engine_rate / plain_rate

    params = sum(p.numel() for p in model.parameters())
    print(
        f"generation: tiny Qwen2 ({params / 1e6:.2f}M params), {args.prompts} prompts x n={args.n}, "
        f"max_new_tokens={args.max_new_tokens}, T=1, torch threads={args.threads}"
    )
    print(f"  {'':24}{'tokens':>10}{'seconds':>10}{'tokens/s':>12}")
    print(f"  {'plain model.generate':24}{plain_tokens:>10}{plain_seconds:>10.2f}{plain_rate:>12.1f}")
    print(f"  {'HFEngine':24}{engine_tokens:>10}{engine_seconds:>10.2f}{engine_rate:>12.1f}")
    repeat_rate = repeat_tokens / repeat_seconds
    print(f"  {'HFEngine, repeated KV':24}{repeat_tokens:>10}{repeat_seconds:>10.2f}{repeat_rate:>12.1f}"
          f"  (transformers' SDPA: KV heads copied per query head; {repeat_seconds / engine_seconds:.2f}x the time)")
    verdict = "PASS" if speedup >= TARGET_SPEEDUP else "FAIL"
    print(f"  speed-up {speedup:.2f}x (target >= {TARGET_SPEEDUP:.0f}x): {verdict}")

    print("weight sync: gloo broadcast on 127.0.0.1, 1 HFEngine receiver, begin -> send -> commit (best of 3)")
    print(f"  {'model':28}{'params':>10}{'seconds':>10}{'s per M params':>16}")
    medium = TinyModelSpec(hidden_size=512, intermediate_size=1408, num_layers=8, num_heads=8, num_kv_heads=4)
    for name, spec in (("tiny (2 x 64)", TinyModelSpec()), ("medium (8 x 512)", medium)):
        count, seconds = bench_weight_sync(spec)
        print(f"  {name:28}{count / 1e6:>9.2f}M{seconds:>10.3f}{seconds / (count / 1e6):>16.4f}")


if __name__ == "__main__":
    main()
