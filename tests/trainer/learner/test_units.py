"""Single-process checks of the learner's pure parts: HF <-> megatron layouts, micro-batching, configs."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from forkrl.trainer.learner.arch import _EXPLICIT_KEYS, ModelArch, plain_config
from forkrl.trainer.learner.attention import document_mask
from forkrl.trainer.learner.batch import (
    LearnerBatch,
    dp_shard,
    pack_rows,
    packed_micro_batches,
    padded_micro_batches,
)
from forkrl.trainer.learner.config import LearnerSpec, OptimizerSpec, ParallelConfig
from forkrl.trainer.learner.hf_mapping import hf_shapes, layer_rules, merge_to_hf, shard_from_hf
from forkrl.trainer.learner.loss import token_sum_norm_length
from forkrl.trainer.objectives import parse_objective
from tests.trainer.learner.tiny import make_batch, tiny_config

ARCH = ModelArch(
    family="qwen2",
    num_layers=2,
    hidden_size=3,
    ffn_hidden_size=4,
    num_heads=4,
    num_kv_heads=2,
    head_dim=2,
    vocab_size=8,
    tie_embeddings=False,
    qkv_bias=True,
    qk_norm=False,
    rope_theta=1e4,
    rms_eps=1e-6,
    max_position_embeddings=16,
)


def _reader(tensor: torch.Tensor):
    def read(dim: int, start: int, stop: int) -> torch.Tensor:
        return tensor.narrow(dim, start, stop - start).clone()

    return read


def _heads(tensor: torch.Tensor, index: int) -> torch.Tensor:
    return tensor[index * ARCH.head_dim : (index + 1) * ARCH.head_dim]


@pytest.mark.parametrize("bias", [False, True])
def test_qkv_layout_groups_query_heads_with_their_kv_head(bias: bool) -> None:
    """Megatron's fused QKV: per KV group g, [its 2 query heads, k head g, v head g]; TP splits groups."""
    rule = next(r for r in layer_rules(ARCH) if r.megatron.endswith("linear_qkv." + ("bias" if bias else "weight")))
    shapes = hf_shapes(rule, ARCH)
    q, k, v = (torch.arange(float(torch.Size(s).numel())).reshape(s) + 1000 * i for i, s in enumerate(shapes))
    group = [
        torch.cat([_heads(q, 0), _heads(q, 1), _heads(k, 0), _heads(v, 0)]),
        torch.cat([_heads(q, 2), _heads(q, 3), _heads(k, 1), _heads(v, 1)]),
    ]
    readers = [_reader(t) for t in (q, k, v)]
    assert torch.equal(shard_from_hf("qkv", readers, shapes, ARCH, 0, 1), torch.cat(group))
    shards = [shard_from_hf("qkv", readers, shapes, ARCH, rank, 2) for rank in range(2)]
    assert torch.equal(shards[0], group[0]) and torch.equal(shards[1], group[1])
    for got, want in zip(merge_to_hf("qkv", shards, ARCH), (q, k, v), strict=True):
        assert torch.equal(got, want)


def test_gate_up_rows_and_cols_round_trip() -> None:
    gate, up = torch.randn(4, 3), torch.randn(4, 3)
    shards = [shard_from_hf("gate_up", [_reader(gate), _reader(up)], [(4, 3), (4, 3)], ARCH, r, 2) for r in range(2)]
    assert torch.equal(shards[1], torch.cat([gate[2:], up[2:]]))  # [gate rows of rank 1; up rows of rank 1]
    merged = merge_to_hf("gate_up", shards, ARCH)
    assert torch.equal(merged[0], gate) and torch.equal(merged[1], up)
    weight = torch.randn(8, 6)
    for layout, dim in (("rows", 0), ("cols", 1)):
        parts = [shard_from_hf(layout, [_reader(weight)], [(8, 6)], ARCH, r, 2) for r in range(2)]
        assert torch.equal(parts[1], weight.chunk(2, dim=dim)[1])
        assert torch.equal(merge_to_hf(layout, parts, ARCH)[0], weight)


def test_replicated_merge_is_a_copy() -> None:
    norm = torch.ones(3)
    out = merge_to_hf("replicated", [norm, norm], ARCH)[0]
    norm.add_(1)
    assert torch.equal(out, torch.ones(3))


def test_batch_validation_names_the_field() -> None:
    batch = make_batch(seed=0, batch=2, width=8)
    with pytest.raises(ValueError, match="advantages must be"):
        LearnerBatch(**{**batch.__dict__, "advantages": torch.zeros(2, 7)})
    bad_mask = batch.response_mask.clone()
    bad_mask[0, 0] = 1
    with pytest.raises(ValueError, match=r"response_mask\[:, 0\]"):
        LearnerBatch(**{**batch.__dict__, "response_mask": bad_mask})
    with pytest.raises(ValueError, match="seq_lens"):
        LearnerBatch(**{**batch.__dict__, "seq_lens": torch.tensor([9, 3])})


def test_padded_micro_batches_predict_every_response_token() -> None:
    batch = make_batch(seed=1, batch=4, width=12)
    mbs = padded_micro_batches(batch, micro_batch_size=2, length_multiple=4)
    assert [mb.seq_index.tolist() for mb in mbs] == [[0, 1], [2, 3]]
    for mb in mbs:
        width = mb.tokens.shape[1]
        assert width % 4 == 0
        rows, cols = mb.pred_index // width, mb.pred_index % width
        sequences = mb.seq_index[mb.out_rows]
        # logits at position t-1 predict token t of the same sequence
        assert torch.equal(rows, mb.out_rows) and torch.equal(cols + 1, mb.out_cols)
        assert torch.equal(mb.target_ids, batch.input_ids[sequences, mb.out_cols])
        assert int(mb.out_rows.numel()) == int(batch.response_mask[mb.seq_index].sum())
    # A ragged last micro-batch keeps the fixed row count; its extra row is padding that predicts nothing.
    ragged = padded_micro_batches(batch, micro_batch_size=3)
    assert [mb.seq_index.tolist() for mb in ragged] == [[0, 1, 2], [3]]
    assert [tuple(mb.tokens.shape) for mb in ragged] == [(3, 12), (3, 12)]
    assert ragged[1].tokens[1:].abs().sum() == 0 and set(ragged[1].out_rows.tolist()) == {0}
    assert int(ragged[1].out_rows.numel()) == int(batch.response_mask[3].sum())


def test_dp_shards_of_any_batch_size_cover_every_row_once() -> None:
    batch = make_batch(seed=2, batch=7, width=10)
    shards = [dp_shard(batch, rank, 3) for rank in range(3)]
    assert [s.num_sequences for s in shards] == [3, 2, 2]
    assert torch.equal(torch.cat([s.input_ids for s in shards]), batch.input_ids)
    # Fewer rows than ranks: the rank without a row gets one that counts no response token.
    single = make_batch(seed=2, batch=1, width=10)
    empty = dp_shard(single, 1, 2)
    assert empty.num_sequences == 1 and empty.response_mask.sum() == 0
    assert torch.equal(dp_shard(single, 0, 2).response_mask, single.response_mask)


def test_pack_rows_first_fit_decreasing() -> None:
    assert pack_rows([5, 9, 3, 4, 2], capacity=10) == [[1], [0, 3], [2, 4]]
    with pytest.raises(ValueError, match="max_tokens=8"):
        pack_rows([9], capacity=8)


def test_packed_rows_restart_positions_and_number_their_sequences() -> None:
    batch = make_batch(seed=2, batch=5, width=10)
    mbs = packed_micro_batches(batch, max_tokens=24)
    assert sorted(i for mb in mbs for i in mb.seq_index.tolist()) == list(range(5))
    for mb in mbs:
        offset = 0
        for local, seq in enumerate(mb.seq_index.tolist()):
            n = int(batch.seq_lens[seq])
            assert torch.equal(mb.tokens[0, offset : offset + n], batch.input_ids[seq, :n])
            assert torch.equal(mb.position_ids[0, offset : offset + n], torch.arange(n))
            assert bool((mb.document_ids[0, offset : offset + n] == local).all())
            offset += n
        assert bool((mb.document_ids[0, offset:] == len(mb.seq_index)).all()), "padding is one more document"
        # The mask those ids stand for: causal inside a sequence, nothing across (True = masked).
        mask = document_mask(mb.document_ids)[0, 0]
        starts = [0, *torch.cumsum(batch.seq_lens[mb.seq_index], 0).tolist()]
        for q_start, q_end in itertools.pairwise(starts):
            for k_start, k_end in itertools.pairwise(starts):
                block = mask[q_start:q_end, k_start:k_end]
                if q_start == k_start:
                    assert torch.equal(~block, torch.ones(q_end - q_start, q_end - q_start, dtype=torch.bool).tril())
                else:
                    assert bool(block.all())
        sequences = mb.seq_index[mb.out_rows]
        assert torch.equal(mb.target_ids, batch.input_ids[sequences, mb.out_cols])
        assert torch.equal(mb.tokens[0, mb.pred_index + 1], mb.target_ids)


def test_model_inputs_reach_the_device_only_when_the_schedule_takes_the_micro_batch() -> None:
    """The meta device stands in for a GPU: what moved is on it, what stayed is on the CPU."""
    batch = make_batch(seed=2, batch=5, width=10)
    mb = packed_micro_batches(batch, max_tokens=24)[0]
    meta = torch.device("meta")
    staged = mb.to(meta, inputs=False)
    assert staged.tokens is mb.tokens and staged.document_ids is mb.document_ids
    assert staged.position_ids is mb.position_ids
    assert staged.pred_index.is_meta and staged.response_mask.is_meta and staged.seq_index.is_meta
    taken = staged.inputs_to(meta)
    assert taken.tokens.is_meta and taken.document_ids.is_meta and taken.position_ids.is_meta
    assert taken.pred_index is staged.pred_index  # the rest is shared, not copied again
    assert not staged.tokens.is_meta  # the staged micro-batch keeps its host inputs
    padded = padded_micro_batches(batch, 2)[0].to(meta, inputs=False).inputs_to(meta)
    assert padded.tokens.is_meta and padded.document_ids is None  # plain causal rows have no mask


def test_parallel_config_errors_name_fields() -> None:
    with pytest.raises(ValidationError, match="virtual_pipeline needs pipeline_parallel"):
        ParallelConfig(virtual_pipeline=2)
    with pytest.raises(ValidationError, match="sequence_parallel needs tensor_parallel"):
        ParallelConfig(sequence_parallel=True)
    with pytest.raises(ValidationError, match="extra"):
        ParallelConfig(tensor_paralel=2)
    par = ParallelConfig(tensor_parallel=2, pipeline_parallel=2)
    assert par.data_parallel_size(8) == 2
    with pytest.raises(ValueError, match="world_size=6"):
        par.data_parallel_size(6)
    with pytest.raises(ValueError, match="data_parallel=4"):
        ParallelConfig(tensor_parallel=2, data_parallel=4).data_parallel_size(4)
    with pytest.raises(ValueError, match="num_key_value_heads=2"):
        ParallelConfig(tensor_parallel=4).validate_for(4, 4, 2, 128)
    with pytest.raises(ValueError, match="num_hidden_layers=6"):
        ParallelConfig(pipeline_parallel=2, virtual_pipeline=2).validate_for(6, 4, 2, 128)


def test_optimizer_and_learner_spec_checks() -> None:
    with pytest.raises(ValidationError, match="decay_steps is required"):
        OptimizerSpec(decay_style="cosine")
    with pytest.raises(ValidationError, match="min_lr"):
        OptimizerSpec(lr=1e-6, min_lr=1e-5)
    assert LearnerSpec().resolved_dtype(has_gpu=False) == "float32"
    assert LearnerSpec().resolved_dtype(has_gpu=True) == "bfloat16"


def test_token_sum_norm_length_is_fixed_for_the_run() -> None:
    """Issue 10: the learner divides seq-mean-token-sum-norm by the objective's constant, else by the run's
    maximum response length, and refuses to fall back to each mini-batch's longest response."""
    sum_norm = parse_objective({"name": "dapo", "loss_agg": "seq-mean-token-sum-norm"})
    assert token_sum_norm_length(sum_norm, LearnerSpec(max_response_length=256)) == 256
    constant = parse_objective({"name": "dapo", "loss_agg": "seq-mean-token-sum-norm", "token_sum_norm_length": 64})
    assert token_sum_norm_length(constant, LearnerSpec(max_response_length=256)) == 64
    assert token_sum_norm_length(constant, LearnerSpec()) == 64
    with pytest.raises(ValueError, match="max_response_length"):
        token_sum_norm_length(sum_norm, LearnerSpec())
    assert token_sum_norm_length(parse_objective({"name": "dapo"}), LearnerSpec()) is None


@pytest.mark.parametrize(("family", "tie"), [("qwen2", False), ("qwen3", True), ("llama", True)])
def test_a_complete_config_json_gives_the_same_arch_without_transformers(family: str, tie: bool,
                                                                         tmp_path: Path) -> None:
    config = tiny_config(family, layers=3, tie=tie)
    config.save_pretrained(tmp_path)
    values = json.loads((tmp_path / "config.json").read_text())
    assert plain_config(values) is not None  # transformers 5 writes every field
    assert ModelArch.from_hf(tmp_path) == ModelArch.from_hf(config)
    # Without a field whose default only transformers knows, the dict goes through transformers' class.
    for key in ("head_dim", "tie_word_embeddings"):
        if key in values:
            partial = {k: v for k, v in values.items() if k != key}
            if key in _EXPLICIT_KEYS or family == "qwen3":
                assert plain_config(partial) is None
            assert ModelArch.from_hf(partial) == ModelArch.from_hf(type(config)(**{
                k: v for k, v in partial.items() if k not in ("model_type", "transformers_version")}))
    probe = ("import sys; from forkrl.trainer.learner.arch import ModelArch; "
             f"ModelArch.from_hf({str(tmp_path)!r}); print('transformers' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_unsupported_architectures_are_rejected() -> None:
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        ModelArch.from_hf({"model_type": "gpt2"})
    with pytest.raises(ValueError, match="attention_bias=True"):
        ModelArch.from_hf({"model_type": "llama", "attention_bias": True})
