"""Rank functions for the learner tests (run through `forkrl.trainer.learner.launch.run_world`).

Each function builds learners for several configurations in one world, so the process start-up is
paid once, and returns plain tensors/dicts from global rank 0 (None elsewhere).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from forkrl.trainer.learner.batch import LearnerBatch
from forkrl.trainer.learner.config import LearnerSpec, MicroBatchSpec, OptimizerSpec, ParallelConfig
from forkrl.trainer.learner.learner import Learner
from forkrl.trainer.objectives import parse_objective


def make_spec(run: dict[str, Any]) -> LearnerSpec:
    """run: tp, pp, vpp, sp, recompute, mode, mbs, max_tokens, distributed, lr, max_response, head,
    attention (all optional; export is read by `layout_runs`)."""
    return LearnerSpec(
        parallel=ParallelConfig(
            tensor_parallel=run.get("tp", 1),
            pipeline_parallel=run.get("pp", 1),
            virtual_pipeline=run.get("vpp"),
            sequence_parallel=run.get("sp", False),
        ),
        # Adam's first step is lr * g / (|g| + eps): with the default eps = 1e-8, gradient entries that are
        # pure rounding noise (~1e-8, layout-dependent summation order) would move by O(lr) in different
        # directions per layout. eps = 1e-4 keeps every real gradient sign-normalised and such noise inert.
        optimizer=OptimizerSpec(
            lr=run.get("lr", 1e-3),
            weight_decay=0.1,
            clip_grad=1.0,
            adam_eps=1e-4,
            distributed=run.get("distributed", True),
        ),
        micro_batch=MicroBatchSpec(
            mode=run.get("mode", "padded"), micro_batch_size=run.get("mbs", 1), max_tokens=run.get("max_tokens")
        ),
        activation_recompute=run.get("recompute", "none"),
        device=run.get("device", "cpu"),
        dtype=run.get("dtype", "float32"),
        max_response_length=run.get("max_response"),
        loss_head=run.get("head", "fused"),
        attention=run.get("attention", "sdpa"),
    )


def _rank0(value: Any) -> Any:
    return value if dist.get_rank() == 0 else None


def token_stats_per_family(model_dirs: dict[str, str], batch: LearnerBatch, tensor_parallel: list[int]) -> Any:
    """compute_logprobs of each family's imported checkpoint at each tensor-parallel size (PP = 1, the
    world's other ranks data-parallel), keyed (family, tp)."""
    out = {}
    for family, model_dir in model_dirs.items():
        for tp in tensor_parallel:
            learner = Learner(make_spec({"tp": tp}), parse_objective({"name": "dapo"}), model_dir)
            stats = learner.compute_logprobs(batch)
            out[family, tp] = {"logp": stats.logp, "entropy": stats.entropy}
            learner.close()
    return _rank0(out)


def layout_runs(model_dir: str, batch: LearnerBatch, objective: dict, runs: list[dict[str, Any]]) -> Any:
    """Per run: token stats, mini-batch loss, gathered gradients (non-distributed optimizer), params after
    one step, and (runs with export=True) the exported initial weights both gathered and per stage."""
    out = []
    for run in runs:
        learner = Learner(make_spec(run), parse_objective(objective), model_dir)
        result: dict[str, Any] = {"run": run}
        if run.get("export"):
            result["initial"] = dict(learner.export_weights())
            local = dict(learner.export_weights(gather_to_rank0=False))
            gathered: list[dict] = [{} for _ in range(dist.get_world_size())]
            dist.all_gather_object(gathered, local)
            result["initial_per_stage"] = gathered
        stats = learner.compute_logprobs(batch)
        result["logp"], result["entropy"] = stats.logp, stats.entropy
        metrics = learner.forward_backward(batch)
        result["loss"] = metrics.loss
        if not run.get("distributed", True) or learner.layout.dp == 1:
            result["grads"] = dict(learner.export_grads())
        result["grad_norm"] = learner.optimizer_step()
        result["params"] = dict(learner.export_weights())
        learner.close()
        out.append(result)
    return _rank0(out)


def objective_losses(model_dir: str, batch: LearnerBatch, objectives: list[dict], run: dict[str, Any]) -> Any:
    """The learner's mini-batch loss for each objective config on one layout (no optimizer step)."""
    out = []
    for objective in objectives:
        learner = Learner(make_spec(run), parse_objective(objective), model_dir)
        metrics = learner.forward_backward(batch)
        out.append({"objective": objective, "loss": metrics.loss, "metrics": metrics})
        learner.close()
    return _rank0(out)


def reference_model(model_dir: str, batch: LearnerBatch, run: dict[str, Any]) -> Any:
    """Archer (needs a frozen reference): reference vs policy log-probs before and after a step."""
    objective = parse_objective({"name": "archer"})
    learner = Learner(make_spec(run), objective, model_dir)
    before_ref = learner.compute_logprobs(batch, "reference").logp
    before_policy = learner.compute_logprobs(batch).logp
    metrics = learner.train_step(batch)
    after_ref = learner.compute_logprobs(batch, "reference").logp
    after_policy = learner.compute_logprobs(batch).logp
    learner.close()
    return _rank0(
        {
            "before_ref": before_ref,
            "before_policy": before_policy,
            "after_ref": after_ref,
            "after_policy": after_policy,
            "metrics": metrics,
        }
    )


def resume_runs(model_dir: str, batches: list[LearnerBatch], ckpt_root: str, total: int, stop: int) -> Any:
    """Straight `total` steps vs `stop` steps + save + fresh learner + load + the rest (same layout),
    then the resharded load of the same checkpoint under TP=1 x DP=2."""
    root = Path(ckpt_root)
    objective = {"name": "dapo"}
    tp2 = {"tp": 2, "distributed": True}
    straight = Learner(make_spec(tp2), parse_objective(objective), model_dir)
    straight_losses = [straight.train_step(batches[i]).loss for i in range(total)]
    straight_params = dict(straight.export_weights())
    straight.close()

    first = Learner(make_spec(tp2), parse_objective(objective), model_dir)
    resumed_losses = [first.train_step(batches[i]).loss for i in range(stop)]
    first.save(root / "ckpt", data_state={"next_batch": stop, "epoch": 0})
    rng_after_save = torch.rand(3)
    first.close()

    second = Learner(make_spec(tp2), parse_objective(objective), model_dir)
    torch.manual_seed(999)  # the load must restore the RNG, whatever happened in between
    cursor = second.load(root / "ckpt")
    rng_after_load = torch.rand(3)
    resumed_losses += [second.train_step(batches[i]).loss for i in range(cursor["next_batch"], total)]
    resumed_params = dict(second.export_weights())
    version = second.weight_version
    second.close()

    resharded = Learner(make_spec({"tp": 1, "distributed": True}), parse_objective(objective), model_dir)
    resharded_cursor = resharded.load(root / "ckpt")
    resharded_losses = [resharded.train_step(batches[i]).loss for i in range(stop, total)]
    resharded_params = dict(resharded.export_weights())
    resharded.close()
    return _rank0(
        {
            "straight_losses": straight_losses,
            "straight_params": straight_params,
            "resumed_losses": resumed_losses,
            "resumed_params": resumed_params,
            "cursor": cursor,
            "rng_after_save": rng_after_save,
            "rng_after_load": rng_after_load,
            "version": version,
            "resharded_cursor": resharded_cursor,
            "resharded_losses": resharded_losses,
            "resharded_params": resharded_params,
        }
    )


def objectives_and_reference(model_dir: str, batch: LearnerBatch, objectives: list[dict], run: dict[str, Any]) -> Any:
    """`objective_losses` and `reference_model` in one world."""
    losses = objective_losses(model_dir, batch, objectives, run)
    reference = reference_model(model_dir, batch, run)
    return _rank0({"losses": losses, "reference": reference})


def gpu_checks(model_dir: str, batch: LearnerBatch, dtype: str, tp: int) -> Any:
    """One layout on CUDA: token stats, a training step, and an export round trip."""
    learner = Learner(
        make_spec({"tp": tp, "device": "cuda", "dtype": dtype, "distributed": True, "mbs": 2}),
        parse_objective({"name": "forking", "rho": 0.5, "scope": "mini_batch_global"}),
        model_dir,
    )
    stats = learner.compute_logprobs(batch)
    before = {k: v.float().cpu() for k, v in learner.export_weights()}
    metrics = learner.train_step(batch)
    after = {k: v.float().cpu() for k, v in learner.export_weights()}
    learner.close()
    return _rank0({"logp": stats.logp, "entropy": stats.entropy, "metrics": metrics, "before": before, "after": after})
