"""Benchmark: the learner's two loss heads from the final hidden states, forward + backward.

    python bench/loss_head.py                          # N = 4096 tokens, h = 896, V = 151,936 (Qwen2.5-0.5B), CPU
    python bench/loss_head.py --tokens 2048 --hidden 512 --vocab 32768 --chunk-tokens 512

Paths (learner.loss_head):
- "logits": logits = hidden @ W.T for every token (what megatron's output layer returns), then the
  vocab-parallel log-prob/entropy kernel (chunked workspace, `logprob_chunk_size` = --chunk-tokens);
- "fused": `forkrl.trainer.fused_head`, --chunk-tokens tokens at a time, the chunk's logits recomputed in
  the backward, so no [tokens, vocab] tensor exists.
Both compute d/d(hidden, W) of sum(logp) + sum(entropy) (entropy with gradient: the harder case).

Each path runs in its own process so its peak resident memory (getrusage ru_maxrss) is its own; reported
above the RSS once the inputs exist. The time is the best of --repeats. Results are checked against each
other (log-probs, entropies, both gradients). The baseline of the ratios is the logits path, run here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from worker_result import collect_result

PATHS = ("logits", "fused")
GIB = 2**30


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_worker(args: argparse.Namespace) -> None:
    import torch

    from forkrl.trainer.fused_head import fused_head_logprobs_and_entropy
    from forkrl.trainer.vocab_parallel import vocab_parallel_logprobs_and_entropy

    gen = torch.Generator().manual_seed(args.seed)
    hidden = (torch.randn(args.tokens, args.hidden, generator=gen) * 0.5).requires_grad_(True)
    weight = (torch.randn(args.vocab, args.hidden, generator=gen) * 0.05).requires_grad_(True)
    targets = torch.randint(0, args.vocab, (args.tokens,), generator=gen)

    def step(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        h = hidden[:rows]
        if args.worker == "fused":
            logp, entropy = fused_head_logprobs_and_entropy(h, weight, targets[:rows], None, 1.0, args.chunk_tokens,
                                                            entropy_requires_grad=True)
        else:
            logp, entropy = vocab_parallel_logprobs_and_entropy(h @ weight.T, targets[:rows], None, 1.0, True,
                                                                chunk_size=args.chunk_tokens)
        (logp.sum() + entropy.sum()).backward()
        return logp.detach(), entropy.detach()

    step(8)  # one-time kernel and dispatcher set-up, untimed
    hidden.grad = weight.grad = None
    baseline = current_rss_bytes()
    times = []
    for repeat in range(args.repeats):
        hidden.grad = weight.grad = None
        start = time.perf_counter()
        logp, entropy = step(args.tokens)
        times.append(time.perf_counter() - start)
        print(f"    {args.worker} repeat {repeat + 1}/{args.repeats}: {times[-1]:.2f} s", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.save({"logp": logp, "entropy": entropy, "hidden": hidden.grad, "weight": weight.grad}, args.result_file)
    print("RESULT " + json.dumps({"seconds": min(times), "peak_extra_bytes": peak - baseline,
                                  "threads": torch.get_num_threads()}), flush=True)


def launch(path: str, args: argparse.Namespace, result_file: Path) -> dict:
    command = [sys.executable, os.path.abspath(__file__), f"--worker={path}", f"--tokens={args.tokens}",
               f"--hidden={args.hidden}", f"--vocab={args.vocab}", f"--chunk-tokens={args.chunk_tokens}",
               f"--repeats={args.repeats}", f"--seed={args.seed}", f"--result-file={result_file}"]
    return collect_result(command, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096, help="response tokens N of a micro-batch")
    parser.add_argument("--hidden", type=int, default=896, help="hidden size h (Qwen2.5-0.5B: 896)")
    parser.add_argument("--vocab", type=int, default=151_936, help="vocabulary V (Qwen: 151,936)")
    parser.add_argument("--chunk-tokens", type=int, default=1024, help="tokens per chunk (both paths)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per path (the fastest is reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in ("tokens", "hidden", "vocab", "chunk_tokens", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.worker:
        run_worker(args)
        return
    import torch

    print(f"forkrl loss-head benchmark: N={args.tokens} tokens, h={args.hidden}, V={args.vocab}, fp32, CPU, "
          f"chunk {args.chunk_tokens} tokens, entropy with gradient, {args.repeats} repeat(s) per path")
    results, outputs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in PATHS:
            print(f"  {path}:")
            file = Path(tmp) / f"{path}.pt"
            results[path] = launch(path, args, file)
            outputs[path] = torch.load(file)
    for key in ("logp", "entropy", "hidden", "weight"):
        torch.testing.assert_close(outputs["fused"][key], outputs["logits"][key], atol=1e-4, rtol=1e-4)
    base = results["logits"]
    print(f"\n{'path':8} {'seconds':>8} {'x logits':>9} {'peak extra GiB':>15} {'x logits':>9}")
    for path in PATHS:
        r = results[path]
        print(f"{path:8} {r['seconds']:8.2f} {r['seconds'] / base['seconds']:9.2f} "
              f"{r['peak_extra_bytes'] / GIB:15.3f} {r['peak_extra_bytes'] / base['peak_extra_bytes']:9.3f}")
    print(f"[tokens x vocab] fp32 logits alone: {args.tokens * args.vocab * 4 / GIB:.3f} GiB; results agree "
          "(log-probs, entropies, both gradients within 1e-4)")


if __name__ == "__main__":
    main()
