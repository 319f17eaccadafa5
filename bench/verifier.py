"""Benchmark: items/s of the verifier service (batched HTTP) vs a plain single-process math-verify loop.

    python bench/verifier.py                    # 2,000 math items, service with 2 workers
    python bench/verifier.py --items 500 --workers 4 --no-symbolic-only-run

The items imitate RLVR rollouts: a chain of thought (~1.5 kB, inline LaTeX) ending in \\boxed{} or a
DAPO `Answer:` line; answers are mostly integers (AIME/DAPO-17K style), the rest fractions/decimals,
radicals, polynomials, intervals and sets; about a quarter are wrong and 5% give no final answer.
Whether each answer is right is known by construction, so both sides' verdicts are also checked.

- baseline: one process, `verify(parse(gold), parse(response))` per item with math-verify's defaults
  (its own extraction over the whole response, no caching) - what a controller would do inline;
- service: `python -m forkrl.rollout.verifier --workers W` on 127.0.0.1, items sent through
  VerifierClient in batches; timed after a warm-up batch, startup excluded;
- service, symbolic only (informational): the same with the fast path off, to separate what the
  worker processes give from what the fast path gives.
Target (issue 3): service >= 1.5x the plain loop with 2 workers on 2 cores. One run, figures as measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from forkrl.rollout.verifier.client import VerifierClient

TARGET = 1.5
_FILLER = [
    "Let $a_n$ denote the number of valid sequences of length $n$.",
    "We note that $a_{n+1} = 2a_n + a_{n-1}$ for $n \\ge 2$, with $a_1 = 1$ and $a_2 = 3$.",
    "Substituting $x = \\frac{y}{2}$ gives $4x^2 - 4x + 1 = (2x-1)^2 \\ge 0$.",
    "By the AM-GM inequality, $\\frac{p+q}{2} \\ge \\sqrt{pq}$, with equality iff $p = q$.",
    "Counting the complementary cases, there are $\\binom{10}{3} = 120$ ways to choose the triple.",
    "Modulo $7$, the powers of $3$ cycle through $3, 2, 6, 4, 5, 1$, so the period is $6$.",
    "Hence the area of triangle $ABC$ is $\\frac{1}{2} \\cdot 8 \\cdot 5 \\sin 30^\\circ = 10$.",
    "Wait, let me double-check the boundary case where $k = 0$; it contributes nothing.",
]
# (gold, equivalent spellings, a wrong answer)
_NON_INTEGER = [
    (r"\frac{3}{4}", [r"\frac{3}{4}", r"\dfrac{3}{4}", "0.75", "3/4"], r"\frac{4}{3}"),
    (r"\frac{1}{2}", [r"\frac12", "0.5", r"\tfrac{1}{2}"], r"\frac{1}{3}"),
    ("2.5", ["2.5", r"\frac{5}{2}", "2.50"], "2.4"),
    (r"2\sqrt{3}", [r"2\sqrt{3}", r"\sqrt{12}"], r"3\sqrt{2}"),
    (r"\frac{\pi}{6}", [r"\frac{\pi}{6}", r"\pi/6"], r"\frac{\pi}{3}"),
    ("x^2+2x+1", ["(x+1)^2", "x^2+2x+1"], "x^2+1"),
    ("[1,3)", ["[1, 3)", r"\left[1,3\right)"], "[1,3]"),
    (r"\{1,2,5\}", [r"\{5,2,1\}", r"\{1,2,5\}"], r"\{1,2\}"),
    ("30", [r"30^\circ", "30"], r"60^\circ"),
]


def make_items(count: int, seed: int = 0) -> tuple[list[dict], list[bool]]:
    """Items and, for each, whether its final answer is mathematically right (known by construction)."""
    rng = random.Random(seed)
    items, truths = [], []
    for index in range(count):
        chain = " ".join(rng.choice(_FILLER) for _ in range(rng.randint(8, 14)))
        kind = rng.random()
        wrong = rng.random() < 0.25
        if kind < 0.65:
            gold = str(rng.randint(0, 999))
            answer = str(rng.randint(0, 999)) if wrong else rng.choice([gold, gold, gold, f"{gold}.", f"x = {gold}"])
        else:
            gold, right, incorrect = rng.choice(_NON_INTEGER)
            answer = incorrect if wrong else rng.choice(right)
        dapo = rng.random() < 0.12
        answered = rng.random() >= 0.05
        truths.append(answered and not wrong)
        if not answered:
            ending = "\n\nI could not finish the computation."
        elif dapo:
            ending = f"\n\nAnswer: {answer}"
        else:
            ending = f"\n\nTherefore, the final answer is $\\boxed{{{answer}}}$."
        items.append(
            {
                "task": "math",
                "id": f"b{index}",
                "response": chain + ending,
                "ground_truth": gold,
                "extraction": "dapo" if dapo else "boxed",
            }
        )
    return items, truths


def run_baseline(items: list[dict]) -> tuple[float, list[bool]]:
    """Plain loop: math-verify's parse (its own extraction) and verify, one item at a time."""
    from math_verify import parse, verify

    for item in items[:20]:  # warm-up: regex compilation, sympy/antlr first-use costs
        verify(parse(f"${item['ground_truth']}$"), parse(item["response"]))
    started = time.perf_counter()
    verdicts = [bool(verify(parse(f"${item['ground_truth']}$"), parse(item["response"]))) for item in items]
    return len(items) / (time.perf_counter() - started), verdicts


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_service(items: list[dict], workers: int, fast_path: bool, batch: int) -> tuple[float, list]:
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "verifier.json"
        config.write_text(json.dumps({"run": "bench", "workers": workers, "math": {"fast_path": fast_path}}))
        command = [sys.executable, "-m", "forkrl.rollout.verifier", "--port", str(port), "--config", str(config)]
        server = subprocess.Popen([*command, "--log-level", "warning"])
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:  # every worker up, not just the first
                try:
                    rows = httpx.get(f"{url}/v1/info", timeout=2).json()["workers"]
                    if all(row["alive"] for row in rows):
                        break
                except (httpx.TransportError, KeyError, ValueError):
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("verifier did not start")
                time.sleep(0.2)

            async def score() -> tuple[float, list]:
                async with VerifierClient(url, max_batch_items=batch, max_concurrent_batches=4) as client:
                    warm = [{**item, "id": f"warm-{item['id']}"} for item in items[:50]]
                    await client.verify(warm)
                    started = time.perf_counter()
                    results = await client.verify(items)
                    return len(items) / (time.perf_counter() - started), results

            return asyncio.run(score())
        finally:
            server.terminate()
            server.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=250, help="Items per HTTP request.")
    parser.add_argument("--no-symbolic-only-run", action="store_true", help="Skip the fast-path-off service run.")
    args = parser.parse_args()
    items, truths = make_items(args.items)
    cores = len(os.sched_getaffinity(0))
    print(f"verifier benchmark: {len(items)} math items, service with {args.workers} workers, {cores} cores")

    service_rate, results = run_service(items, args.workers, True, args.batch)
    base_rate, base_verdicts = run_baseline(items)
    fast = sum(r.method == "fast_path" for r in results) / len(results)
    service_accuracy = sum(r.correct == t for r, t in zip(results, truths, strict=True)) / len(items)
    base_accuracy = sum(v == t for v, t in zip(base_verdicts, truths, strict=True)) / len(items)
    print(f"  plain math-verify loop (1 process):   {base_rate:8.1f} items/s")
    print(f"  service, batched HTTP:                 {service_rate:8.1f} items/s   (fast path decided {fast:.0%})")
    if not args.no_symbolic_only_run:
        symbolic_rate, _ = run_service(items, args.workers, False, args.batch)
        relative = symbolic_rate / base_rate
        print(f"  service, fast path off (info):         {symbolic_rate:8.1f} items/s   ({relative:.2f}x)")
    print(f"  verdicts matching the construction truth: service {service_accuracy:.1%}, plain loop {base_accuracy:.1%}")
    ratio = service_rate / base_rate
    print(f"{'PASS' if ratio >= TARGET else 'FAIL'}: service / plain loop = {ratio:.2f}x (target >= {TARGET}x)")


if __name__ == "__main__":
    main()
