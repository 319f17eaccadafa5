"""Packed rows' attention without an [s, s] tensor: per-document SDPA (CPU) and FlexAttention's block mask
(CUDA) against a dense block-diagonal causal mask in float64, forward and backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from forkrl.trainer.learner.attention import (
    document_block_mask,
    document_mask,
    document_spans,
    flex_document_attention,
    per_document_attention,
    same_document_causal,
)

HEADS, GROUPS, HEAD_DIM = 4, 2, 8


def packed_document_ids(lengths_per_row: list[list[int]], width: int) -> torch.Tensor:
    """[rows, width] int32: each row's sequences numbered in order, the trailing padding one more."""
    rows = []
    for lengths in lengths_per_row:
        ids = torch.full((width,), len(lengths), dtype=torch.int32)
        offset = 0
        for number, n in enumerate(lengths):
            ids[offset : offset + n] = number
            offset += n
        rows.append(ids)
    return torch.stack(rows)


def qkv(rows: int, width: int, dtype: torch.dtype, device: str = "cpu", seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(rows, HEADS, width, HEAD_DIM), (rows, GROUPS, width, HEAD_DIM), (rows, GROUPS, width, HEAD_DIM)]
    return [torch.randn(shape, generator=generator, dtype=torch.float64).to(device, dtype).requires_grad_()
            for shape in shapes]


def dense_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, document_ids: torch.Tensor) -> torch.Tensor:
    """Scores for every pair, masked to the same document and the past: what the kernels must equal."""
    repeat = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(document_mask(document_ids.to(q.device)), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


LAYOUTS = [
    ([[5, 3, 7]], 16),  # one padding position at the end
    ([[16]], 16),  # one sequence filling the row: plain causal
    ([[1, 1, 1, 4], [6, 2]], 9),  # single-token sequences; the second row has a padding span of one
]


@pytest.mark.parametrize(("lengths", "width"), LAYOUTS)
def test_per_document_sdpa_equals_the_dense_mask_forward_and_backward(lengths: list[list[int]], width: int) -> None:
    document_ids = packed_document_ids(lengths, width)
    q, k, v = qkv(len(lengths), width, torch.float64)
    spans = document_spans(document_ids)
    assert [sum(end - start for start, end in row) for row in spans] == [width] * len(lengths)
    out = per_document_attention(q, k, v, spans, scale=None, gqa=True)
    reference = dense_reference(q, k, v, document_ids)
    torch.testing.assert_close(out, reference, rtol=1e-10, atol=1e-12)
    upstream = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), upstream)
    reference_grads = torch.autograd.grad(reference, (q, k, v), upstream)
    for got, want in zip(grads, reference_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_a_document_split_in_two_spans_is_refused() -> None:
    with pytest.raises(ValueError, match="contiguous spans"):
        document_spans(torch.tensor([[0, 0, 1, 0, 2]], dtype=torch.int32))


def test_document_mask_is_causal_inside_a_document_and_closed_across() -> None:
    mask = document_mask(packed_document_ids([[2, 3]], 6))[0, 0]  # True = masked
    allowed = [[int(not m) for m in row] for row in mask.tolist()]
    assert allowed == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],  # padding attends only to itself
    ]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention trains on CUDA only")
def test_flex_attention_on_cuda_equals_the_dense_mask_at_16k_tokens_without_an_s_by_s_tensor() -> None:
    """bf16 FlexAttention (compiled) at 16,384 packed tokens against float64 on the same GPU; its peak
    memory stays far below one [s, s] bf16 matrix per head (the dense path's scores)."""
    width, lengths = 16_384, [[700, 3000, 12, 5000, 4096, 3000]]
    document_ids = packed_document_ids(lengths, width).cuda()
    q, k, v = qkv(1, width, torch.bfloat16, "cuda", seed=1)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = flex_document_attention(q, k, v, document_ids, scale=None, gqa=True)
    out.sum().backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    assert peak < HEADS * width * width * 2 / 8, f"peak {peak / 2**20:.0f} MiB"
    spans = document_spans(document_ids)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    reference = per_document_attention(q64, k64, v64, spans, scale=None, gqa=True)
    torch.testing.assert_close(out.double(), reference, rtol=2e-2, atol=2e-2)
    reference.sum().backward()
    torch.testing.assert_close(q.grad.double(), q64.grad, rtol=5e-2, atol=5e-2)


def test_flex_attention_mask_forward_on_cpu_equals_the_dense_mask() -> None:
    """FlexAttention has no backward on CPU, and inductor may not compile for this CPU, but its eager forward
    runs: the mask built from document ids (the part forkrl writes) is checked on every machine, not only
    where a GPU is lent."""
    document_ids = packed_document_ids([[5, 3, 7], [15]], 16)
    q, k, v = (t.detach().float() for t in qkv(2, 16, torch.float64))
    with torch.no_grad():
        out = flex_document_attention(q, k, v, document_ids, scale=None, gqa=True, compiled=False)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(
        q, k, v, attn_mask=~document_mask(document_ids), enable_gqa=True), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("lengths", "width", "block"), [
    ([[5, 3, 7], [15]], 16, 4),
    ([[9, 9, 2, 20], [1, 1, 30], [40]], 40, 8),  # a last block that is not whole
    ([[100, 400, 12]], 512, 128),
])
def test_block_mask_from_block_boundaries_equals_the_one_built_from_every_position(
        lengths: list[list[int]], width: int, block: int) -> None:
    from torch.nn.attention.flex_attention import create_block_mask

    document_ids = packed_document_ids(lengths, width)
    ours = document_block_mask(document_ids, block_size=block)
    theirs = create_block_mask(same_document_causal(document_ids), B=len(lengths), H=None, Q_LEN=width,
                               KV_LEN=width, device="cpu", BLOCK_SIZE=block)
    assert torch.equal(ours.to_dense(), theirs.to_dense())
    assert torch.equal(ours.kv_num_blocks, theirs.kv_num_blocks)
    assert torch.equal(ours.full_kv_num_blocks, theirs.full_kv_num_blocks)
    for count, mine, reference in ((ours.full_kv_num_blocks, ours.full_kv_indices, theirs.full_kv_indices),
                                   (ours.kv_num_blocks, ours.kv_indices, theirs.kv_indices)):
        for row, n in enumerate(count.flatten().tolist()):
            rows = mine.reshape(-1, mine.shape[-1]), reference.reshape(-1, reference.shape[-1])
            assert sorted(rows[0][row, :n].tolist()) == sorted(rows[1][row, :n].tolist())
    assert (ours.full_kv_num_blocks > 0).any() or block == 4, "the larger layouts have whole visible blocks"


def test_decreasing_document_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="must not decrease"):
        document_block_mask(torch.tensor([[1, 1, 0, 2]], dtype=torch.int32), block_size=2)
