"""`forkrl train`: the embedded local mode. Starts the verifier and rollout replicas as processes and the
learner ranks as Ray actors, runs the RLVR loop, evaluates, checkpoints, reports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from forkrl.trainer.controller.checkpoints import CheckpointStore
from forkrl.trainer.controller.progress import Progress
from forkrl.trainer.controller.recorder import Recorder, read_records
from forkrl.trainer.controller.setup import (
    PreflightError,
    count_parameters,
    estimated_checkpoint_bytes,
    load_datasets,
    preflight_checkpoint_dir,
    starting_model,
)
from forkrl.trainer.spec import RLVRJobSpec, SpecError, load_spec


def prepare_policy(spec: RLVRJobSpec, run_dir: Path, log) -> tuple[str, Any, dict[str, Any]]:
    """The checkpoint RL starts from (after the optional cold start) and the tokenizer."""
    from forkrl.trainer.controller.cold_start import run_cold_start, save_checkpoint, sft_examples
    from forkrl.trainer.controller.setup import load_dataset
    from forkrl.trainer.data.templates import render_prompt

    model, tokenizer, path = starting_model(spec, run_dir)
    info: dict[str, Any] = {}
    if not spec.cold_start.enabled:
        if path is not None:
            return str(path), tokenizer, info
        target = run_dir / "base_model"
        if not (target / "config.json").exists():
            save_checkpoint(model, tokenizer, target)
        return str(target), tokenizer, info
    target = run_dir / "cold_start_model"
    if (target / "config.json").exists():
        log(f"cold start: reusing {target}")
        return str(target), tokenizer, info
    if model is None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(path))
    assert spec.cold_start.dataset is not None
    rows = load_dataset(spec.cold_start.dataset, log=log)
    examples = sft_examples(rows, lambda r: render_prompt(r, spec.data.template, tokenizer), tokenizer)
    start = time.monotonic()
    losses = run_cold_start(model, examples, tokenizer.pad_token_id, spec.cold_start.steps,
                            spec.cold_start.batch_size, spec.cold_start.lr, spec.seed, log)
    info = {"cold_start_seconds": time.monotonic() - start, "cold_start_final_loss": losses[-1]}
    save_checkpoint(model, tokenizer, target)
    return str(target), tokenizer, info


async def run(spec: RLVRJobSpec, resume: bool, quiet: bool) -> int:
    import ray

    from forkrl.rollout.verifier.client import VerifierClient
    from forkrl.trainer.controller.learner_group import LearnerGroup
    from forkrl.trainer.controller.loop import RLVRController
    from forkrl.trainer.controller.services import ReplicaPool, start_rollout_replica, start_verifier
    from forkrl.trainer.controller.summary import finish_run
    from forkrl.trainer.data.stream import PromptStream

    run_dir = spec.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    mode = "quiet" if quiet else spec.observability.progress
    progress = Progress(spec.schedule.steps, 0, mode if mode != "bar" or sys.stderr.isatty() else "lines")
    log = progress.log
    store = CheckpointStore(spec.checkpoint_dir(), spec.checkpoint.keep_last)
    train_rows, eval_sets = load_datasets(spec, log)
    policy_path, tokenizer, info = prepare_policy(spec, run_dir, log)
    preflight_checkpoint_dir(store.root, estimated_checkpoint_bytes(count_parameters(policy_path)))

    services: list[Any] = []
    learners = None
    replicas = verifier = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda s=signum: (log(f"received {signal.Signals(s).name}: finishing "
                                                                  "the step, then checkpointing"), stop.set()))
    recorder = Recorder(spec.name, run_dir, spec.observability.metrics_port, spec.observability.tensorboard)
    try:
        threads = spec.resources.torch_threads or 1
        ray.init(num_cpus=max(os.cpu_count() or 1, spec.resources.learner_ranks * spec.resources.cpus_per_learner),
                 include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads)}})
        if spec.verifier.endpoint is None:
            config = {"run": spec.name, "math": spec.verifier.math.model_dump(),
                      "code": spec.verifier.code.model_dump()}
            services.append(start_verifier(config, run_dir / "logs", spec.verifier.workers))
            verifier_url = services[-1].url
        else:
            verifier_url = spec.verifier.endpoint
        verifier = VerifierClient(verifier_url, timeout_s=spec.verifier.request_timeout_s,
                                  max_retries=spec.verifier.max_retries)
        urls = list(spec.rollout.endpoints)
        for index in range(spec.rollout.replicas):
            replica = start_rollout_replica(policy_path, run_dir / "logs", index, spec.rollout.engine, threads,
                                            spec.rollout.max_batch_size, spec.seed, spec.rollout.in_flight_on_sync)
            services.append(replica)
            urls.append(replica.url)
        replicas = ReplicaPool(urls)
        learner_spec = spec.learner
        if learner_spec.max_sequence_length is None:
            learner_spec = learner_spec.model_copy(update={
                "max_sequence_length": spec.model.max_prompt_tokens + spec.model.max_response_tokens})
        learners = LearnerGroup(learner_spec, spec.objective, policy_path, spec.resources.learner_ranks,
                                spec.resources.cpus_per_learner, spec.resources.gpus_per_learner, threads)
        stream = PromptStream(train_rows, spec.seed, spec.data.shuffle)
        controller = RLVRController(spec, tokenizer, learners, replicas, verifier, stream, log)
        state = store.latest() if resume else None
        if resume and state is None:
            log(f"--resume: no checkpoint under {store.root}; starting from the beginning")
        if state is not None:
            data_state = learners.load(str(state.learner_dir))
            controller.step, controller.version = state.step, state.version
            controller.eval_history = state.eval_history
            stream.restore(data_state["stream"])
            info.update(state.info)
            log(f"resumed from {state.path} (step {state.step}, weight version {state.version})")
        elif spec.eval.datasets and spec.eval.before_training:
            await evaluate(controller, eval_sets, "before_rl", recorder, log)
        progress.total = spec.schedule.steps
        if progress._bar is not None:
            progress._bar.n = controller.step
        pending = None
        while controller.step < spec.schedule.steps and not stop.is_set():
            if spec.schedule.mode == "sync":
                record = await controller.train_step_sync()
            else:
                record, pending = await controller.train_step_off_policy(pending)
            controller.step += 1
            record["step"] = float(controller.step)
            recorder.record(controller.step, record)
            progress.update(controller.step, record)
            interval_eval = spec.eval.interval and controller.step % spec.eval.interval == 0
            if interval_eval and controller.step < spec.schedule.steps:
                await evaluate(controller, eval_sets, f"step_{controller.step}", recorder, log)
            if controller.step % spec.checkpoint.interval == 0 or stop.is_set():
                await checkpoint(controller, learners, store, stream, info, log)
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        if stop.is_set():
            if store.latest() is None or store.latest().step != controller.step:
                await checkpoint(controller, learners, store, stream, info, log)
            log(f"stopped at step {controller.step}; continue with: forkrl train <spec> --resume")
            return 0
        if store.latest() is None or store.latest().step != controller.step:
            await checkpoint(controller, learners, store, stream, info, log)
        if spec.eval.datasets:
            await evaluate(controller, eval_sets, "after_rl", recorder, log)
        final = run_dir / "final_model"
        await asyncio.to_thread(learners.write_weights, str(final))
        tokenizer.save_pretrained(final)
        finish_run(spec, run_dir, controller.eval_history, read_records(recorder.jsonl_path, "train"), info,
                   controller.entropy_sample, log)
        return 0
    finally:
        progress.close()
        recorder.close()
        if learners is not None:
            learners.shutdown()
        if replicas is not None:
            await replicas.aclose()
        if verifier is not None:
            await verifier.aclose()
        for service in reversed(services):
            service.stop()
        with contextlib.suppress(Exception):
            ray.shutdown()


async def evaluate(controller, eval_sets, phase: str, recorder: Recorder, log) -> None:
    results = await controller.evaluate(eval_sets, phase)
    for name, result in results.items():
        low, high = result.ci95
        log(f"eval {phase} {name}: avg@{result.samples_per_problem} {result.avg_at_k:.4f} "
            f"(95% CI {low:.4f}-{high:.4f}) " + " ".join(f"pass@{k} {v:.4f}" for k, v in result.pass_at_k.items()))
        values = {f"eval/{name}/avg": result.avg_at_k, **{f"eval/{name}/pass@{k}": v
                                                            for k, v in result.pass_at_k.items()}}
        recorder.record(controller.step, values, kind="eval")


async def checkpoint(controller, learners, store: CheckpointStore, stream, info: dict, log) -> None:
    start = time.monotonic()
    target = store.new(controller.step)
    data_state = {"stream": stream.state.to_dict()}
    await asyncio.to_thread(learners.save, str(target.learner_dir), data_state)
    store.commit(target, controller.step, controller.version, controller.eval_history, info)
    log(f"checkpoint step {controller.step} -> {target.path} ({time.monotonic() - start:.1f}s)")


def train_main(spec_path: str, resume: bool = False, quiet: bool = False) -> int:
    """Entry point of `forkrl train`: exit 0 on success or a clean stop, 2 on a bad spec or pre-flight."""
    try:
        spec = load_spec(spec_path)
    except SpecError as err:
        print(err, file=sys.stderr)
        return 2
    try:
        return asyncio.run(run(spec, resume, quiet))
    except PreflightError as err:
        print(f"forkrl train: {err}", file=sys.stderr)
        return 2


def summary_json(path: Path) -> dict[str, Any]:
    """The machine-readable summary a finished run leaves in runs/<name>/summary.json."""
    return json.loads(path.read_text())
