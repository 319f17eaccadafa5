"""Benchmark: packed rows' attention on CPU, per-document SDPA (the learner's path) against one SDPA call
with a dense additive block-diagonal mask (the path it replaced), forward + backward, side by side.

    python bench/attention.py                          # 1,024 / 4,096 / 8,192 tokens, 16 documents per row
    python bench/attention.py --tokens 2048 --documents 64 --repeats 5

Both paths get the same q, k, v (bf16 is not used: CPU, fp32) and must agree (checked every run). Each
prints the median wall time of `--repeats` forward + backward passes and the bytes of [s, s]-sized tensors
it holds: the dense path's additive mask (fp32, s^2 x 4 B), the per-document path none. Ratios are
dense / per-document (> 1: the learner's path is faster).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from forkrl.trainer.learner.attention import document_mask, document_spans, per_document_attention


def document_ids(tokens: int, documents: int, generator: torch.Generator) -> torch.Tensor:
    """[1, tokens]: `documents` sequences of random lengths filling the row, numbered in order."""
    cuts = torch.randperm(tokens - 1, generator=generator)[: documents - 1].add(1).sort().values.tolist()
    bounds = [0, *cuts, tokens]
    ids = torch.empty(1, tokens, dtype=torch.int32)
    for number, (start, end) in enumerate(itertools.pairwise(bounds)):
        ids[0, start:end] = number
    return ids


def dense_pass(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ids: torch.Tensor,
               upstream: torch.Tensor) -> torch.Tensor:
    """One SDPA call with the additive [1, 1, s, s] block-diagonal mask, forward + backward."""
    tokens = ids.shape[1]
    bias = torch.zeros(1, 1, tokens, tokens).masked_fill_(document_mask(ids), float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True)
    out.backward(upstream)
    return out.detach()


def per_document_pass(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ids: torch.Tensor,
                      upstream: torch.Tensor) -> torch.Tensor:
    """One causal SDPA call per document (the learner's CPU path), forward + backward."""
    out = per_document_attention(q, k, v, document_spans(ids), scale=None, gqa=True)
    out.backward(upstream)
    return out.detach()


def timed(run: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    times, out = [], None
    for _ in range(repeats + 1):  # the first pass warms up and is not counted
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--documents", type=int, default=16)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; heads {args.heads}/{args.kv_heads}, "
          f"head dim {args.head_dim}, {args.documents} documents per row, fp32, forward + backward")
    print(f"{'tokens':>7} {'dense ms':>9} {'per-doc ms':>10} {'ratio':>6} {'dense mask MiB':>15} {'per-doc MiB':>12}")
    for tokens in args.tokens:
        generator = torch.Generator().manual_seed(tokens)
        ids = document_ids(tokens, args.documents, generator)
        q = torch.randn(1, args.heads, tokens, args.head_dim, generator=generator, requires_grad=True)
        k = torch.randn(1, args.kv_heads, tokens, args.head_dim, generator=generator, requires_grad=True)
        v = torch.randn(1, args.kv_heads, tokens, args.head_dim, generator=generator, requires_grad=True)
        upstream = torch.randn(1, args.heads, tokens, args.head_dim, generator=generator)

        inputs = (q, k, v, ids, upstream)
        dense_s, dense_out = timed(functools.partial(dense_pass, *inputs), args.repeats)
        per_doc_s, per_doc_out = timed(functools.partial(per_document_pass, *inputs), args.repeats)
        torch.testing.assert_close(per_doc_out, dense_out, rtol=1e-4, atol=1e-5)
        mask_mib = tokens * tokens * 4 / 2**20
        print(f"{tokens:>7} {dense_s * 1e3:>9.1f} {per_doc_s * 1e3:>10.1f} {dense_s / per_doc_s:>6.2f} "
              f"{mask_mib:>15.1f} {0.0:>12.1f}")


if __name__ == "__main__":
    main()
