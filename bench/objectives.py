"""Benchmark: naive vs chunked vs in-place chunked per-token log-prob + entropy (forward, and backward
of the log-probs).

    python bench/objectives.py                      # N = 4096 tokens, V = 151,936 (Qwen vocab), fp32, CPU
    python bench/objectives.py --tokens 512 --vocab 32768 --chunk-size 256

Paths: "naive" (plain torch ops), "chunked" (custom autograd, gradient in a fresh [tokens, vocab]
buffer) and "in-place" (chunked with inplace_backward=True: the gradient is written into the logits'
storage). Naive and chunked take leaf logits, whose .grad receives the gradient. In-place logits must
not be a leaf (that would overwrite a parameter), so there they are the output of a zero-cost stand-in
for an output layer (its backward, like a matmul's, does not read its output, and it adds no time or
memory of its own); after backward the logits' storage holds the gradient.

Each path runs in its own subprocess so that its peak resident memory (getrusage ru_maxrss) is its
own. Memory is reported above the RSS measured once the logits exist:
- "peak extra": everything the forward + backward allocated, including the [tokens, vocab] gradient of
  the logits (for the in-place path it lives in the logits' storage and costs nothing);
- "excl. gradient" (informational): peak extra minus that gradient for naive and chunked, i.e. the
  memory the kernel needs beyond its inputs and outputs.
Target (issue 2): the in-place chunked path's peak extra memory, gradient included (total extra
memory of forward + backward), <= 1/8 of naive's, and its wall time <= naive's.
All results are checked against naive's (log-probs, entropies, gradient norm).
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

GIB = 1024**3
MEMORY_TARGET = 1 / 8
# Copies of the fp32 [tokens, vocab] logits the naive path holds at its peak (z, log_softmax, softmax,
# p*z), plus the logits themselves: used only to refuse runs that cannot fit in this machine's memory.
NAIVE_PEAK_COPIES = 6


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


PATHS = ("naive", "chunked", "inplace")
LABELS = {"naive": "naive", "chunked": "chunked", "inplace": "in-place"}


def run_worker(args: argparse.Namespace) -> None:
    """One path, one process: allocate logits, time forward + backward, report peak RSS above them."""
    import torch

    from forkrl.trainer.entropy import logprobs_and_entropy_chunked, logprobs_and_entropy_naive

    class OutputLayerStandIn(torch.autograd.Function):
        """Returns the given logits as a non-leaf output; backward, like a matmul's, ignores the output."""

        @staticmethod
        def forward(
            ctx: torch.autograd.function.FunctionCtx, anchor: torch.Tensor, logits: torch.Tensor
        ) -> torch.Tensor:
            return logits

        @staticmethod
        def backward(ctx: torch.autograd.function.FunctionCtx, grad_logits: torch.Tensor) -> tuple[None, None]:
            return None, None

    anchor = torch.zeros((), requires_grad=True)

    def differentiable(logits: torch.Tensor) -> torch.Tensor:
        if args.worker == "inplace":
            return OutputLayerStandIn.apply(anchor, logits)
        return logits.requires_grad_(True)

    def compute(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if args.worker == "naive":
            return logprobs_and_entropy_naive(logits, targets, args.temperature)
        return logprobs_and_entropy_chunked(
            logits, targets, args.temperature, chunk_size=args.chunk_size, inplace_backward=args.worker == "inplace"
        )

    def fill_logits(logits: torch.Tensor) -> torch.Tensor:
        """Same values in every process and repeat (the in-place path overwrites them with the gradient)."""
        torch.randn(logits.shape, generator=torch.Generator().manual_seed(args.seed), out=logits)
        return logits.mul_(2.0)

    logits = fill_logits(torch.empty(args.tokens, args.vocab))
    gen = torch.Generator().manual_seed(args.seed + 1)
    targets = torch.randint(0, args.vocab, (args.tokens,), generator=gen)
    weights = torch.randn(args.tokens, generator=gen)
    # Warm-up on a few rows so one-time kernel/dispatcher setup is not timed.
    logp, _ = compute(differentiable(logits[:8].clone()), targets[:8])
    (logp * weights[:8]).sum().backward()
    del logp

    baseline = current_rss_bytes()
    peak_before = peak_rss_bytes()
    times = []
    for repeat in range(args.repeats):
        if repeat > 0 and args.worker == "inplace":
            fill_logits(logits)  # untimed, in place: no new memory
        leaf = differentiable(logits)
        start = time.perf_counter()
        logp, entropy = compute(leaf, targets)
        middle = time.perf_counter()
        (logp * weights).sum().backward()
        end = time.perf_counter()
        times.append((middle - start, end - middle))
        print(
            f"    {args.worker} repeat {repeat + 1}/{args.repeats}: forward {middle - start:.2f} s, "
            f"backward {end - middle:.2f} s",
            flush=True,
        )
        grad = logits if args.worker == "inplace" else leaf.grad
        grad_norm = float(grad.norm())
        torch.save({"logp": logp.detach(), "entropy": entropy.detach()}, args.result_file)
        logits.grad = None
        del logp, entropy, leaf, grad
    peak = peak_rss_bytes()
    best = min(times, key=sum)
    result = {
        "forward_s": best[0],
        "backward_s": best[1],
        "peak_extra_bytes": peak - baseline,
        "peak_before_run_above_baseline": peak_before - baseline,
        "grad_norm": grad_norm,
        "threads": torch.get_num_threads(),
    }
    print("RESULT " + json.dumps(result), flush=True)


def launch(path: str, args: argparse.Namespace, result_file: Path) -> dict:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        f"--worker={path}",
        f"--tokens={args.tokens}",
        f"--vocab={args.vocab}",
        f"--chunk-size={args.chunk_size}",
        f"--temperature={args.temperature}",
        f"--repeats={args.repeats}",
        f"--seed={args.seed}",
        f"--result-file={result_file}",
    ]
    return collect_result(command, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096, help="number of tokens N (rows of the logits)")
    parser.add_argument("--vocab", type=int, default=151_936, help="vocabulary size V (Qwen: 151,936)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="rows per chunk in the chunked path")
    parser.add_argument("--temperature", type=float, default=1.0, help="logits are divided by this")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per path (the fastest is reported)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random logits")
    parser.add_argument("--force", action="store_true", help="run even if memory looks insufficient")
    parser.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in ("tokens", "vocab", "chunk_size", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.worker:
        run_worker(args)
        return

    copy_bytes = args.tokens * args.vocab * 4
    print(
        f"forkrl objectives benchmark: log-prob + entropy, N={args.tokens} tokens x V={args.vocab} vocab, fp32, "
        f"CPU, T={args.temperature}, chunk={args.chunk_size}, {args.repeats} repeat(s) per path"
    )
    print(f"  one fp32 [N, V] tensor = {copy_bytes / GIB:.2f} GiB; each path runs in its own subprocess")
    needed = NAIVE_PEAK_COPIES * copy_bytes
    available = available_memory_bytes()
    if available is not None and available < needed and not args.force:
        raise SystemExit(
            f"the naive path needs about {needed / GIB:.1f} GiB but only {available / GIB:.1f} GiB is "
            "available: lower --tokens/--vocab, or pass --force"
        )

    results = {}
    outputs = {}
    with tempfile.TemporaryDirectory(prefix="forkrl-bench-") as tmp:
        for index, path in enumerate(PATHS, start=1):
            print(
                f"[{index}/{len(PATHS)}] {LABELS[path]}: forward + backward of log-probs (entropy under no_grad) ...",
                flush=True,
            )
            result_file = Path(tmp) / f"{path}.pt"
            results[path] = launch(path, args, result_file)
            import torch

            outputs[path] = torch.load(result_file)

    naive = results["naive"]
    agreement = {}
    for path in PATHS[1:]:
        logp_diff = float((outputs["naive"]["logp"] - outputs[path]["logp"]).abs().max())
        entropy_diff = float((outputs["naive"]["entropy"] - outputs[path]["entropy"]).abs().max())
        grad_rel = abs(naive["grad_norm"] - results[path]["grad_norm"]) / max(naive["grad_norm"], 1e-30)
        agreement[path] = (logp_diff, entropy_diff, grad_rel)
    for path, result in results.items():
        result["time_s"] = result["forward_s"] + result["backward_s"]
        # The in-place gradient lives in the logits' storage: nothing of it is in peak extra to subtract.
        gradient_bytes = 0 if path == "inplace" else copy_bytes
        result["excl_gradient_bytes"] = result["peak_extra_bytes"] - gradient_bytes

    print()
    header = "".join(f"{LABELS[p]:>12}" for p in PATHS) + "".join(f"{LABELS[p] + '/naive':>16}" for p in PATHS[1:])
    print(f"{'':30}{header}")
    rows = [
        ("forward (s)", "forward_s", 1.0, "{:12.2f}"),
        ("backward (s)", "backward_s", 1.0, "{:12.2f}"),
        ("total (s)", "time_s", 1.0, "{:12.2f}"),
        ("peak extra incl. grad (GiB)", "peak_extra_bytes", GIB, "{:12.3f}"),
        ("excl. grad, info (GiB)", "excl_gradient_bytes", GIB, "{:12.3f}"),
    ]
    for label, key, scale, fmt in rows:
        values = "".join(fmt.format(results[p][key] / scale) for p in PATHS)
        base = naive[key]
        ratios = "".join(f"{results[p][key] / base if base > 0 else float('nan'):16.3f}" for p in PATHS[1:])
        print(f"{label:30}{values}{ratios}")
    print(
        f"  (the {copy_bytes / GIB:.2f} GiB logits gradient is a fresh buffer for naive and chunked, and the "
        "logits' own storage for in-place)"
    )
    for path, (logp_diff, entropy_diff, grad_rel) in agreement.items():
        print(
            f"  {LABELS[path]} vs naive: max |dlogp| = {logp_diff:.2e}, max |dH| = {entropy_diff:.2e}, "
            f"grad-norm rel. diff = {grad_rel:.2e}"
        )
    print(f"  torch threads = {naive['threads']}")

    for path, result in results.items():
        if result["peak_before_run_above_baseline"] > 0.05 * max(result["peak_extra_bytes"], 1):
            print(f"  warning: {path}'s RSS peaked before the timed run; its memory figure may be too high")
    chunked, inplace = results["chunked"], results["inplace"]
    print(
        f"  info: chunked (out of place) peak extra = {chunked['peak_extra_bytes'] / naive['peak_extra_bytes']:.3f} "
        f"x naive with the gradient, {chunked['excl_gradient_bytes'] / naive['excl_gradient_bytes']:.3f} x "
        "without it"
    )
    memory_ratio = inplace["peak_extra_bytes"] / naive["peak_extra_bytes"]
    time_ratio = inplace["time_s"] / naive["time_s"]
    agree = all(lp < 1e-4 and h < 1e-4 and g < 1e-5 for lp, h, g in agreement.values())
    passed = memory_ratio <= MEMORY_TARGET and time_ratio <= 1.0 and agree
    print(
        f"{'PASS' if passed else 'FAIL'}: in-place chunked peak extra memory incl. gradient = {memory_ratio:.3f} x "
        f"naive (target <= {MEMORY_TARGET:.3f}), time = {time_ratio:.3f} x naive (target <= 1.0), "
        f"results agree: {agree}"
    )
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
