"""`forkrl plan`: per-rank memory of TP / PP / DP layouts for a model on a cluster, and a recommendation.

Memory per rank (worst pipeline stage), for bf16 parameters with fp32 gradient buffers and
megatron's distributed Adam (fp32 master weights + two moments, sharded over DP):

    params      = P_rank x 2 B          grads = P_rank x 4 B          optimizer = P_rank x 12 B / DP
    activations = layers_on_stage x per_layer(recompute) x micro-batches in flight (PP for stage 0, 1F1B)
    loss head   = the last stage's logits-sized memory (learner.loss_head):
                  fused:  min(chunk, tokens) x vocab / TP x (2 B bf16 block + 4 B fp32 workspace + 4 B fp32
                          entropy-gradient scratch): one chunk at a time, forward and backward
                  logits: tokens x vocab / TP x (2 B bf16 logits + 4 B fp32 kernel workspace)

per_layer: what autograd keeps for backward of forkrl's megatron local layers (torch RMSNorm, unfused
SwiGLU: no TransformerEngine or Apex kernels), e bytes per element (2 for bf16), T = tokens per micro-batch,
t = TP, sp = t with sequence parallelism else 1; checked against a measured forward on CPU (test_plan.py):
    none:      e T (6h/sp + 2/sp + ((a + 2g) d + 2 a d + g d + 5 f) / t) + e 4 d s
                 RMSNorm keeps its input, rstd, the normalised x and x * weight (the next linear's input), twice;
                 attention the qkv output, rotated q and k and the context; the MLP fc1's output, both SwiGLU
                 factors and fc2's input; rotary cos/sin per position
               + attention `sdpa`: 4 T (a / t), the fp32 log-sum-exp of the flash / memory-efficient kernels;
                 `unfused`: e b (a/t) s^2 softmax output + b s^2 causal mask (1 B) + e T g d / t (v made
                 contiguous) per layer
    selective: the same without the attention term (core attention recomputed)
    full:      e T h / sp (layer inputs only; one layer is rebuilt at a time during backward)
plus, per micro-batch in flight, what packed rows attend with: their document ids [b, s] (int32) and, for
`sdpa`, FlexAttention's block mask (a few int32 per 128 x 128 block); `unfused` builds the dense bool
[b, 1, s, s] mask from the ids (1 B per pair, shared by every layer).

P_rank is counted in closed form and checked by building the recommended layout's first and last
stage of the real architecture on the meta device (fake process group, no memory allocated).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from forkrl.trainer.learner.arch import ModelArch
from forkrl.trainer.learner.config import LearnerSpec
from forkrl.trainer.learner.presets import PRESETS, preset

GIB = 2**30
Recompute = Literal["none", "selective", "full"]
# Extra compute relative to no recomputation (attention-only vs whole-layer forward re-run).
RECOMPUTE_OVERHEAD: dict[str, float] = {"none": 0.0, "selective": 0.05, "full": 0.33}
TP_OVERHEAD_PER_DOUBLING = 0.03  # intra-node tensor-parallel all-reduces (NVLink) per doubling of TP


@dataclasses.dataclass(frozen=True)
class Workload:
    tokens: int = 16384  # tokens per micro-batch row (packed) x micro-batch size
    micro_batch_size: int = 1
    micro_batches: int = 16  # per DP rank per optimizer step (pipeline bubble)
    sequence_parallel: bool = True
    # The learner's own defaults (learner.loss_head, loss_head_chunk_tokens, attention).
    loss_head: Literal["fused", "logits"] = LearnerSpec.model_fields["loss_head"].default
    head_chunk_tokens: int = LearnerSpec.model_fields["loss_head_chunk_tokens"].default
    attention: Literal["sdpa", "unfused"] = LearnerSpec.model_fields["attention"].default


@dataclasses.dataclass(frozen=True)
class Cluster:
    nodes: int
    gpus_per_node: int
    gpu_memory_gib: float
    reserve_gib: float = 4.0  # CUDA context, NCCL buffers, allocator fragmentation
    headroom: float = 0.9

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def usable_bytes(self) -> float:
        return (self.gpu_memory_gib * self.headroom - self.reserve_gib) * GIB


@dataclasses.dataclass(frozen=True)
class LayoutEstimate:
    tp: int
    pp: int
    dp: int
    recompute: Recompute
    params_per_rank: int
    param_gib: float
    grad_gib: float
    optimizer_gib: float
    activation_gib: float
    logits_gib: float
    total_gib: float
    fits: bool
    relative_step_time: float


def stage_param_counts(arch: ModelArch, tp: int, pp: int) -> list[int]:
    """Parameters held by one TP rank of each pipeline stage (closed form)."""
    h, d, f = arch.hidden_size, arch.head_dim, arch.ffn_hidden_size
    qkv = (arch.num_heads + 2 * arch.num_kv_heads) * d
    sharded = qkv * h + arch.num_heads * d * h + 3 * f * h + (qkv if arch.qkv_bias else 0)
    replicated = 2 * h + (2 * d if arch.qk_norm else 0)
    per_layer = sharded // tp + replicated
    layers = arch.num_layers // pp
    embedding = arch.vocab_size * h // tp
    counts = []
    for stage in range(pp):
        count = layers * per_layer
        if stage == 0:
            count += embedding
        if stage == pp - 1:
            count += h  # final norm
            if not arch.tie_embeddings or pp > 1:
                count += embedding  # output layer (a synced copy of the embedding when tied and PP > 1)
        counts.append(count)
    return counts


def activation_bytes_per_layer(arch: ModelArch, tp: int, work: Workload, recompute: Recompute,
                               element_bytes: int = 2) -> float:
    """Bytes autograd keeps for backward per transformer layer and micro-batch (module docstring)."""
    tokens, batch = work.tokens, work.micro_batch_size
    seq = tokens // batch
    sp = tp if work.sequence_parallel and tp > 1 else 1
    h, d, f = arch.hidden_size, arch.head_dim, arch.ffn_hidden_size
    a, g = arch.num_heads, arch.num_kv_heads
    e = element_bytes
    if recompute == "full":
        return e * tokens * h / sp
    per_token = (6 * h + 2) / sp + ((a + 2 * g) * d + 2 * a * d + g * d + 5 * f) / tp
    rotary = 4 * d * seq  # cos and sin for q and k, per position (shared by the rows of a micro-batch)
    if recompute == "selective":
        attention = 0.0
    elif work.attention == "sdpa":
        attention = 4 * tokens * (a / tp)
    else:  # the probabilities, the causal mask, and v made contiguous for the batched matmul
        attention = (e * (a / tp) + 1) * batch * seq * seq + e * tokens * g * d / tp
    return e * (tokens * per_token + rotary) + attention


def mask_bytes(work: Workload) -> float:
    """What a packed micro-batch attends with (one per micro-batch in flight, shared by its layers): document
    ids, plus FlexAttention's block mask (`sdpa`: per row, int32 block counts and indices of partial and full
    blocks, by query block and by kv block) or the dense bool mask megatron's unfused module needs."""
    seq = work.tokens // work.micro_batch_size
    ids = 4 * work.tokens
    if work.attention == "sdpa":
        blocks = math.ceil(seq / 128)
        return ids + work.micro_batch_size * 4 * 4 * (blocks * blocks + blocks)  # (q, kv) x (partial, full)
    return ids + work.micro_batch_size * seq * seq


def loss_head_bytes(arch: ModelArch, tp: int, work: Workload) -> float:
    """The last stage's logits-sized memory: one fused-head chunk, or the whole micro-batch's logits."""
    if work.loss_head == "fused":
        return min(work.head_chunk_tokens, work.tokens) * arch.vocab_size / tp * 10
    return work.tokens * arch.vocab_size / tp * 6


def estimate(
    arch: ModelArch, tp: int, pp: int, dp: int, recompute: Recompute, cluster: Cluster, work: Workload
) -> LayoutEstimate:
    """Memory of the most loaded rank (stage 0 holds PP micro-batches of activations; the last the logits)."""
    counts = stage_param_counts(arch, tp, pp)
    layers = arch.num_layers // pp
    in_flight = min(pp, work.micro_batches)
    logits = loss_head_bytes(arch, tp, work)
    per_stage = []
    for stage, count in enumerate(counts):
        params, grads, optim = count * 2, count * 4, count * 12 / dp
        per_micro_batch = layers * activation_bytes_per_layer(arch, tp, work, recompute) + mask_bytes(work)
        acts = per_micro_batch * max(in_flight - stage, 1)
        stage_logits = logits if stage == pp - 1 else 0.0
        per_stage.append(
            (params + grads + optim + acts + stage_logits, count, params, grads, optim, acts, stage_logits)
        )
    total, count, params, grads, optim, acts, logit_bytes = max(per_stage)
    bubble = (pp - 1) / work.micro_batches
    step_time = (1 + RECOMPUTE_OVERHEAD[recompute]) * (1 + bubble) * (1 + TP_OVERHEAD_PER_DOUBLING * math.log2(tp))
    return LayoutEstimate(
        tp=tp,
        pp=pp,
        dp=dp,
        recompute=recompute,
        params_per_rank=count,
        param_gib=params / GIB,
        grad_gib=grads / GIB,
        optimizer_gib=optim / GIB,
        activation_gib=acts / GIB,
        logits_gib=logit_bytes / GIB,
        total_gib=total / GIB,
        fits=total <= cluster.usable_bytes,
        relative_step_time=round(step_time, 4),
    )


def candidate_layouts(arch: ModelArch, cluster: Cluster) -> list[tuple[int, int, int]]:
    """(TP, PP, DP) with TP inside a node dividing the heads, PP dividing the layers, DP filling the rest."""
    out = []
    tp = 1
    while tp <= cluster.gpus_per_node:
        if arch.num_heads % tp == 0 and arch.num_kv_heads % tp == 0 and arch.vocab_size % tp == 0:
            for pp in range(1, arch.num_layers + 1):
                if arch.num_layers % pp == 0 and cluster.gpus % (tp * pp) == 0:
                    out.append((tp, pp, cluster.gpus // (tp * pp)))
        tp *= 2
    return out


def plan(arch: ModelArch, cluster: Cluster, work: Workload) -> tuple[list[LayoutEstimate], LayoutEstimate | None]:
    """Every candidate layout x recompute mode, and the fitting one with the lowest relative step time
    (ties: fewer model-parallel ranks, then fewer pipeline stages)."""
    rows = [
        estimate(arch, tp, pp, dp, recompute, cluster, work)
        for tp, pp, dp in candidate_layouts(arch, cluster)
        for recompute in ("none", "selective", "full")
    ]
    fitting = [r for r in rows if r.fits]
    best = min(fitting, key=lambda r: (r.relative_step_time, r.tp * r.pp, r.pp), default=None)
    return rows, best


def meta_stage_param_counts(hf_config: dict[str, Any], tp: int, pp: int) -> list[int]:
    """Build TP-rank 0 of every pipeline stage on the meta device in a fake world of TP x PP ranks, count."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from forkrl.trainer.learner.config import LearnerSpec, ParallelConfig
    from forkrl.trainer.learner.model import build_model_chunks, transformer_config

    arch = ModelArch.from_hf(hf_config)
    spec = LearnerSpec(parallel=ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp), dtype="bfloat16")
    counts = []
    for stage in range(pp):
        dist.init_process_group("fake", rank=stage * tp, world_size=tp * pp, store=FakeStore())
        try:
            parallel_state.initialize_model_parallel(tp, pp, create_gloo_process_groups=False)
            if parallel_state.get_pipeline_model_parallel_rank() != stage:
                raise RuntimeError(f"fake rank {stage * tp} is not on pipeline stage {stage}")
            with torch.device("meta"):
                chunks = build_model_chunks(arch, transformer_config(arch, spec, has_gpu=True), 4096, False)
            counts.append(sum(p.numel() for chunk in chunks for p in chunk.parameters()))
        finally:
            parallel_state.destroy_model_parallel()
            dist.destroy_process_group()
    return counts


def _format_table(rows: list[LayoutEstimate], best: LayoutEstimate | None, show_all: bool) -> str:
    header = (
        f"{'TP':>3} {'PP':>3} {'DP':>3} {'recompute':>9} {'params/rank':>12} {'param':>7} {'grad':>7} "
        f"{'optim':>7} {'activ':>7} {'logits':>7} {'total':>7}  {'time':>5}  fits"
    )
    lines = [header + "   (GiB per rank, worst stage; time = relative step time)"]
    for r in rows:
        if not show_all and not r.fits:
            continue
        mark = "  <- recommended" if r == best else ""
        lines.append(
            f"{r.tp:>3} {r.pp:>3} {r.dp:>3} {r.recompute:>9} {r.params_per_rank / 1e9:>11.3f}B {r.param_gib:>7.1f} "
            f"{r.grad_gib:>7.1f} {r.optimizer_gib:>7.1f} {r.activation_gib:>7.1f} {r.logits_gib:>7.1f} "
            f"{r.total_gib:>7.1f}  {r.relative_step_time:>5.2f}  {'yes' if r.fits else 'no'}{mark}"
        )
    return "\n".join(lines)


def _load_model(args: argparse.Namespace) -> dict[str, Any]:
    if args.hf_config:
        path = Path(args.hf_config)
        return json.loads((path / "config.json" if path.is_dir() else path).read_text())
    return preset(args.model)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forkrl plan", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help=f"a known architecture: {', '.join(sorted(PRESETS))}")
    source.add_argument("--hf-config", help="a Hugging Face config.json (or the checkpoint directory)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (TP stays inside a node)")
    parser.add_argument("--gpu-memory-gib", type=float, default=80.0, help="memory per GPU in GiB")
    parser.add_argument("--tokens", type=int, default=16384, help="tokens per micro-batch (packed row)")
    parser.add_argument("--micro-batch-size", type=int, default=1, help="rows per micro-batch")
    parser.add_argument("--micro-batches", type=int, default=16, help="micro-batches per DP rank per step")
    parser.add_argument("--no-sequence-parallel", action="store_true", help="estimate without SP")
    parser.add_argument("--attention", choices=("sdpa", "unfused"), default=Workload.attention,
                        help="learner.attention: sdpa (fused kernels) or unfused (keeps [s, s] scores); "
                        "default: the learner's")
    parser.add_argument("--loss-head", choices=("fused", "logits"), default=Workload.loss_head,
                        help="learner.loss_head: fused (no logits tensor) or logits; default: the learner's")
    parser.add_argument("--head-chunk-tokens", type=int, default=Workload.head_chunk_tokens,
                        help="learner.loss_head_chunk_tokens")
    parser.add_argument("--all", action="store_true", help="also list layouts that do not fit")
    parser.add_argument("--no-meta-check", action="store_true", help="skip the meta-device parameter count")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("nodes", "gpus_per_node", "tokens", "micro_batch_size", "micro_batches", "head_chunk_tokens"):
        if getattr(args, name) < 1:
            print(f"--{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    try:
        hf_config = _load_model(args)
        arch = ModelArch.from_hf(hf_config)
    except (KeyError, ValueError, OSError) as err:
        print(f"forkrl plan: {err}", file=sys.stderr)
        return 2
    cluster = Cluster(args.nodes, args.gpus_per_node, args.gpu_memory_gib)
    work = Workload(args.tokens, args.micro_batch_size, args.micro_batches, not args.no_sequence_parallel,
                    args.loss_head, args.head_chunk_tokens, args.attention)
    rows, best = plan(arch, cluster, work)
    check = None
    if best is not None and not args.no_meta_check:
        built = meta_stage_param_counts(hf_config, best.tp, best.pp)
        check = {"closed_form": stage_param_counts(arch, best.tp, best.pp), "meta_build": built}
    if args.json:
        out = {
            "parameters": arch.num_parameters(),
            "layouts": [dataclasses.asdict(r) for r in rows],
            "recommended": dataclasses.asdict(best) if best else None,
            "meta_check": check,
        }
        print(json.dumps(out, indent=2))
        return 0 if best else 1
    print(
        f"model: {arch.family}, {arch.num_parameters() / 1e9:.2f}B parameters ({arch.num_layers} layers, hidden "
        f"{arch.hidden_size}, {arch.num_heads} heads / {arch.num_kv_heads} KV, vocab {arch.vocab_size})"
    )
    print(
        f"cluster: {cluster.nodes} x {cluster.gpus_per_node} GPUs x {cluster.gpu_memory_gib:g} GiB (usable "
        f"{cluster.usable_bytes / GIB:.1f} GiB); micro-batch {work.micro_batch_size} x "
        f"{work.tokens // work.micro_batch_size} tokens, {work.micro_batches} per step; bf16 + fp32 grads + "
        f"distributed Adam; {work.attention} attention, {work.loss_head} loss head"
    )
    print(_format_table(rows, best, args.all))
    if best is None:
        print("no layout fits: add GPUs, shorten the micro-batch (--tokens) or use larger-memory GPUs")
        return 1
    print(
        f"recommended: tensor_parallel={best.tp} pipeline_parallel={best.pp} data_parallel={best.dp} "
        f"activation_recompute={best.recompute} ({best.total_gib:.1f} GiB per rank)"
    )
    if check is not None:
        same = check["closed_form"] == check["meta_build"]
        print(
            f"meta-device build of each stage (TP rank 0): {check['meta_build']} parameters; closed form "
            f"{check['closed_form']}: {'match' if same else 'MISMATCH'}"
        )
        if not same:
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
