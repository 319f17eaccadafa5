"""Learner throughput: megatron `train_step` at TP=1/2 and PP=1/2 vs a plain single-process PyTorch loop.

All runs train the same tiny Qwen2 (random init, saved once as safetensors) on the same batch with
the same objective (DAPO, token-mean) and optimizer (AdamW, clip 1.0); the plain loop is the
transformers model + `trainer.entropy.logprobs_and_entropy` + `compute_policy_loss`. Figures are
tokens (prompt + response) per second of one optimizer step, averaged over the timed steps, and
printed as ratios to the plain loop measured in the same run; peak RSS is per rank.

On a GPU (when one is visible) it also runs a 0.5B-class config (Qwen2.5-0.5B shape, random init,
bf16, one GPU) and reports model FLOPs utilisation: (6 N + 12 L h s) x tokens/s / peak, with N the
matmul parameters (layers + LM head), h = heads x head_dim and s the sequence length.

    ~/.cache/forkrl/venv/bin/python bench/learner.py [--steps 5] [--gpu-only] [--skip-gpu]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from typing import Any

import torch
import transformers

from forkrl.trainer.learner.batch import LearnerBatch
from forkrl.trainer.learner.launch import run_world

TINY = dict(
    vocab_size=2048,
    hidden_size=256,
    intermediate_size=704,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    max_position_embeddings=512,
    rope_theta=10000.0,
    tie_word_embeddings=False,
)
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


def make_batch(sequences: int, width: int, vocab: int, seed: int = 0) -> LearnerBatch:
    gen = torch.Generator().manual_seed(seed)
    seq_lens = torch.randint(width * 3 // 4, width + 1, (sequences,), generator=gen)
    prompt = width // 4
    positions = torch.arange(width)
    valid = positions < seq_lens[:, None]
    response = valid & (positions >= prompt)
    ids = torch.where(valid, torch.randint(0, vocab, (sequences, width), generator=gen), 0)
    signs = torch.where(torch.rand(sequences, generator=gen) < 0.5, -1.0, 1.0)
    return LearnerBatch(
        input_ids=ids, seq_lens=seq_lens, response_mask=response.float(), advantages=(signs[:, None] * response).float()
    )


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plain_loop(model_dir: str, batch: LearnerBatch, micro_batch_size: int, steps: int, warmup: int) -> dict:
    """The same update in plain PyTorch on one process: transformers forward, library loss, AdamW."""
    from forkrl.trainer.entropy import logprobs_and_entropy
    from forkrl.trainer.objectives import LossInputs, compute_policy_loss, mini_batch_context, parse_objective

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.1, eps=1e-8)
    cfg = parse_objective({"name": "dapo"})
    rows = [slice(s, s + micro_batch_size) for s in range(0, batch.num_sequences, micro_batch_size)]
    ctx = mini_batch_context(cfg, [batch.response_mask[r] for r in rows], group=None)
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for r in rows:
            ids, mask = batch.input_ids[r], batch.response_mask[r].bool()
            width = int(batch.seq_lens[r].max())
            attention = (torch.arange(width)[None] < batch.seq_lens[r][:, None]).long()
            logits = model(input_ids=ids[:, :width], attention_mask=attention).logits
            b, t = mask[:, :width].nonzero(as_tuple=True)
            logp_flat, entropy_flat = logprobs_and_entropy(logits[b, t - 1], ids[b, t])
            logp = torch.zeros(mask.shape).index_put((b, t), logp_flat)
            entropy = torch.zeros(mask.shape).index_put((b, t), entropy_flat)
            inputs = LossInputs(
                logp=logp, old_logp=logp.detach(), advantages=batch.advantages[r], response_mask=mask, entropy=entropy
            )
            compute_policy_loss(cfg, inputs, ctx).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return {"tokens_per_s": float(batch.seq_lens.sum()) * len(times) / sum(times), "peak_rss_mib": _peak_rss_mib()}


def learner_rank(
    model_dir: str | None, hf_config: Any, batch: LearnerBatch, run: dict, steps: int, warmup: int
) -> dict:
    from forkrl.trainer.learner.config import LearnerSpec, MicroBatchSpec, OptimizerSpec, ParallelConfig
    from forkrl.trainer.learner.learner import Learner
    from forkrl.trainer.objectives import parse_objective

    spec = LearnerSpec(
        parallel=ParallelConfig(tensor_parallel=run["tp"], pipeline_parallel=run["pp"]),
        optimizer=OptimizerSpec(lr=1e-5, weight_decay=0.1, clip_grad=1.0),
        micro_batch=MicroBatchSpec(micro_batch_size=run["mbs"]),
        device=run.get("device", "cpu"),
        dtype=run.get("dtype", "float32"),
        activation_recompute=run.get("recompute", "none"),
    )
    learner = Learner(spec, parse_objective({"name": "dapo"}), model_path=model_dir, hf_config=hf_config)
    times = []
    for step in range(warmup + steps):
        if learner.use_gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        learner.train_step(batch)
        if learner.use_gpu:
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    out = {"tokens_per_s": float(batch.seq_lens.sum()) * len(times) / sum(times), "peak_rss_mib": _peak_rss_mib()}
    if learner.use_gpu:
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["device"] = torch.cuda.get_device_name()
    learner.close()
    return out


def cpu_bench(args: argparse.Namespace) -> None:
    """Every configuration once per repeat (interleaved, so background load hits all alike); best of repeats."""
    layouts = ((1, 1), (2, 1), (1, 2))
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="forkrl-bench-") as tmp:
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(transformers.Qwen2Config(**TINY))
        model.save_pretrained(tmp, safe_serialization=True)
        batch = make_batch(args.sequences, args.width, TINY["vocab_size"])
        for _ in range(args.repeats):
            results = {"plain": run_world(plain_loop, 1, tmp, batch, args.micro_batch_size, args.steps, args.warmup)}
            for tp, pp in layouts:
                run = {"tp": tp, "pp": pp, "mbs": args.micro_batch_size}
                results[f"{tp},{pp}"] = run_world(learner_rank, tp * pp, tmp, None, batch, run, args.steps, args.warmup)
            for key, ranks in results.items():
                if key not in best or ranks[0]["tokens_per_s"] > best[key][0]["tokens_per_s"]:
                    best[key] = ranks
    tokens = int(batch.seq_lens.sum())
    print(
        f"tiny Qwen2 (hidden {TINY['hidden_size']}, {TINY['num_hidden_layers']} layers, vocab "
        f"{TINY['vocab_size']}), {args.sequences} sequences x <= {args.width} tokens ({tokens} tokens/step), "
        f"micro-batch {args.micro_batch_size}, DAPO, fp32, CPU ({torch.get_num_threads()} threads visible), "
        f"best of {args.repeats} interleaved repeats x {args.steps} steps"
    )
    print(f"{'run':<28} {'ranks':>5} {'tokens/s':>10} {'vs plain':>9} {'vs TP1PP1':>10}  peak RSS per rank (MiB)")
    plain, base = best["plain"][0]["tokens_per_s"], best["1,1"][0]["tokens_per_s"]
    names = {"plain": "plain PyTorch (1 process)", **{f"{t},{p}": f"megatron TP={t} PP={p}" for t, p in layouts}}
    for key, ranks in best.items():
        tps = ranks[0]["tokens_per_s"]
        print(
            f"{names[key]:<28} {len(ranks):>5} {tps:>10.0f} {tps / plain:>9.2f} {tps / base:>10.2f}  "
            + ", ".join(f"{r['peak_rss_mib']:.0f}" for r in ranks)
        )


def gpu_bench(args: argparse.Namespace) -> None:
    from forkrl.trainer.learner.arch import ModelArch
    from forkrl.trainer.learner.presets import preset

    hf = preset("qwen2.5-0.5b")
    arch = ModelArch.from_hf(hf)
    batch = make_batch(args.gpu_sequences, args.gpu_width, arch.vocab_size)
    run = {
        "tp": 1,
        "pp": 1,
        "mbs": args.gpu_micro_batch_size,
        "device": "cuda",
        "dtype": "bfloat16",
        "recompute": "selective",
    }
    result = run_world(learner_rank, 1, None, hf, batch, run, args.steps, args.warmup, backend="nccl")[0]
    h, d = arch.hidden_size, arch.head_dim
    per_layer = h * (arch.num_heads + 2 * arch.num_kv_heads) * d + arch.num_heads * d * h + 3 * h * arch.ffn_hidden_size
    matmul_params = arch.num_layers * per_layer + arch.vocab_size * h
    seq = args.gpu_width
    flops_per_token = 6 * matmul_params + 12 * arch.num_layers * arch.num_heads * d * seq
    name = result["device"]
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), args.peak_tflops)
    mfu = flops_per_token * result["tokens_per_s"] / (peak * 1e12)
    print(gpu_bench_line(name, args, result["tokens_per_s"], mfu, peak, result["peak_gpu_mib"]))


def gpu_bench_line(device: str, args: argparse.Namespace, tokens_per_s: float, mfu: float, peak_tflops: float,
                   peak_gpu_mib: float) -> str:
    """The --gpu-only result line (scripts/gpu_summary.py reads its figures back)."""
    return (
        f"GPU {device}: Qwen2.5-0.5B shape, bf16, {args.gpu_sequences} x <= {args.gpu_width} tokens, micro-batch "
        f"{args.gpu_micro_batch_size}, selective recompute: {tokens_per_s:.0f} tokens/s, "
        f"MFU {100 * mfu:.1f}% of {peak_tflops} TFLOP/s, peak GPU memory {peak_gpu_mib:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats (best is reported)")
    parser.add_argument("--sequences", type=int, default=16, help="sequences per mini-batch (CPU)")
    parser.add_argument("--width", type=int, default=256, help="max tokens per sequence (CPU)")
    parser.add_argument("--micro-batch-size", type=int, default=4, help="sequences per micro-batch (CPU)")
    parser.add_argument("--gpu-sequences", type=int, default=64)
    parser.add_argument("--gpu-width", type=int, default=2048)
    parser.add_argument("--gpu-micro-batch-size", type=int, default=4)
    parser.add_argument("--peak-tflops", type=float, default=989.4, help="bf16 peak of an unlisted GPU")
    parser.add_argument("--gpu-only", action="store_true")
    parser.add_argument("--skip-gpu", action="store_true")
    args = parser.parse_args()
    if not args.gpu_only:
        cpu_bench(args)
    if torch.cuda.is_available() and not args.skip_gpu:
        gpu_bench(args)
    elif not args.skip_gpu:
        print("no GPU visible: MFU of the 0.5B-class config not measured")


if __name__ == "__main__":
    main()
