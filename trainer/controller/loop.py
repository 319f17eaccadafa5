"""`forkrl train`: the training loop. Prepares data and the starting policy, starts the run's services
(`LocalRun`), runs the RL steps (step.py) with evaluation and checkpoints, and writes the report.
SIGTERM/SIGINT finish the current step, checkpoint and exit 0; `--resume` continues."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from forkrl.rollout.network import LOCAL_BIND_HOST
from forkrl.trainer.controller.checkpoints import CheckpointStore
from forkrl.trainer.controller.cluster_status import StatusReporter
from forkrl.trainer.controller.learner_group import LearnerFailure
from forkrl.trainer.controller.local_run import LocalRun
from forkrl.trainer.controller.progress import Progress
from forkrl.trainer.controller.recorder import Recorder, read_eval_records, read_step_records
from forkrl.trainer.controller.setup import (
    PreflightError,
    count_parameters,
    estimated_checkpoint_bytes,
    load_dataset,
    load_datasets,
    preflight_checkpoint_dir,
    starting_model,
)
from forkrl.trainer.controller.step import ControllerState, RLVRController
from forkrl.trainer.data.schema import PromptRow
from forkrl.trainer.metrics.records import EvalRecord
from forkrl.trainer.spec import RLVRJobSpec, SpecError
from forkrl.trainer.spec.overrides import load_spec_with_settings

StepHook = Callable[[LocalRun, int], Awaitable[None]]
"""Called after every step with the run and the step number (tests inject faults here)."""


def prepare_policy(spec: RLVRJobSpec, run_dir: Path, log) -> tuple[str, Any, dict[str, Any]]:
    """The checkpoint RL starts from (after the optional cold start) and the tokenizer."""
    from forkrl.trainer.controller.cold_start import run_cold_start, save_checkpoint, sft_examples
    from forkrl.trainer.data.templates import render_prompt

    model, tokenizer, path = starting_model(spec, run_dir)
    if not spec.cold_start.enabled:
        if path is not None:
            return str(path), tokenizer, {}
        target = run_dir / "base_model"
        if not (target / "config.json").exists():
            save_checkpoint(model, tokenizer, target)
        return str(target), tokenizer, {}
    target = run_dir / "cold_start_model"
    if (target / "config.json").exists():
        log(f"cold start: reusing {target}")
        return str(target), tokenizer, {}
    if model is None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(path))
    assert spec.cold_start.dataset is not None
    rows = load_dataset(spec.cold_start.dataset, log=log)
    examples = sft_examples(rows, lambda r: render_prompt(r, spec.data.template, tokenizer), tokenizer)
    start = time.monotonic()
    losses = run_cold_start(model, examples, tokenizer.pad_token_id, spec.cold_start.steps,
                            spec.cold_start.batch_size, spec.cold_start.lr, spec.seed, log)
    save_checkpoint(model, tokenizer, target)
    return str(target), tokenizer, {"cold_start_seconds": time.monotonic() - start,
                                    "cold_start_final_loss": losses[-1]}


async def evaluate(controller: RLVRController, eval_sets: dict[str, list[PromptRow]], phase: str,
                   recorder: Recorder, log: Callable[[str], None]) -> None:
    results = await controller.evaluate(eval_sets, phase)
    for name, result in results.items():
        low, high = result.ci95
        answered = "" if result.answered is None else f"; {result.answered:.1%} of samples gave an answer"
        log(f"eval {phase} {name}: avg@{result.samples_per_problem} {result.avg_at_k:.4f} "
            f"(95% CI {low:.4f}-{high:.4f}) " + " ".join(f"pass@{k} {v:.4f}" for k, v in result.pass_at_k.items())
            + answered)
        recorder.record_eval(EvalRecord(step=controller.step, phase=phase, dataset=name, avg=result.avg_at_k,
                                        pass_at={str(k): v for k, v in result.pass_at_k.items()},
                                        answered=result.answered))


INFLIGHT_ROLLOUT = "inflight_rollout.pt"


async def checkpoint(controller: RLVRController, store: CheckpointStore, info: dict[str, Any],
                     log: Callable[[str], None], pending: asyncio.Future | None = None) -> None:
    """Off-policy, `pending` is the next step's rollout, already complete (the sync waited for it): it was
    generated with the weights before this step's update, which a resumed run no longer has, so it is saved
    and reused; the cursor stored is the one it started from (its prompts are not skipped without it)."""
    start = time.monotonic()
    target = store.new(controller.step)
    state = controller.state_dict()
    data_state: dict[str, Any] = {"stream": state.stream}
    if pending is not None and state.stream_after_inflight is not None:
        data_state["stream_after_inflight"] = state.stream_after_inflight
        if pending.done() and not pending.cancelled() and pending.exception() is None:
            await asyncio.to_thread(torch_save, pending.result(), target.path / INFLIGHT_ROLLOUT)
    await asyncio.to_thread(controller.learners.save, str(target.learner_dir), data_state)
    store.commit(target, state.step, state.version, state.eval_history, info)
    log(f"checkpoint step {controller.step} -> {target.path} ({time.monotonic() - start:.1f}s)")


def torch_save(value: Any, path: Path) -> None:
    import torch

    torch.save(value, path)


def inflight_rollout(path: Path, data_state: dict[str, Any]) -> asyncio.Future | None:
    """The saved in-flight rollout of an off-policy checkpoint as a finished task, or None."""
    file = path / INFLIGHT_ROLLOUT
    if "stream_after_inflight" not in data_state or not file.exists():
        return None
    import torch

    future: asyncio.Future = asyncio.get_running_loop().create_future()
    future.set_result(torch.load(file, weights_only=False))
    return future


async def run(spec: RLVRJobSpec, resume: bool = False, quiet: bool = False, after_step: StepHook | None = None
              ) -> int:
    """The whole local run; returns the process exit code."""
    from forkrl.trainer.controller.model_export import export_model
    from forkrl.trainer.controller.summary import finish_run

    run_dir = spec.run_dir()
    if not resume and (run_dir / "metrics.jsonl").exists():
        # A fresh run never appends to an old one: keep the old directory under a new name.
        previous = run_dir.with_name(f"{run_dir.name}.prev-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(previous)
        print(f"forkrl train: moved the previous run to {previous} (use --resume to continue it)", file=sys.stderr)
    run_dir.mkdir(parents=True, exist_ok=True)
    mode = "quiet" if quiet else spec.observability.progress
    if mode == "bar" and not sys.stderr.isatty():
        mode = "lines"
    progress = Progress(spec.schedule.steps, 0, mode)
    log = progress.log
    store = CheckpointStore(spec.checkpoint_dir(), spec.checkpoint.keep_last)
    preflight_checkpoint_dir(store.root, 0)  # writable at all: fail before any work
    train_rows, eval_sets = load_datasets(spec, log)
    policy_path, tokenizer, info = prepare_policy(spec, run_dir, log)
    preflight_checkpoint_dir(store.root, estimated_checkpoint_bytes(count_parameters(policy_path)))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def request_stop(signum: int) -> None:
        log(f"received {signal.Signals(signum).name}: finishing the current step, then checkpointing")
        stop.set()

    # In a pod (the operator sets FORKRL_NAMESPACE) Prometheus scrapes from outside: listen on all interfaces.
    metrics_addr = "0.0.0.0" if os.environ.get("FORKRL_NAMESPACE") else LOCAL_BIND_HOST
    recorder = Recorder(spec.name, run_dir, spec.observability.metrics_port, spec.observability.tensorboard,
                        metrics_addr, log=log)
    reporter = StatusReporter.from_env(log)
    local = LocalRun(spec, policy_path, tokenizer, train_rows, log)
    pending: asyncio.Future | None = None
    try:
        controller = await local.start()
        # After ray.init, which installs its own SIGTERM handler (it would abort the driver).
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, request_stop, signum)
        state = store.latest() if resume else None
        if resume and state is None:
            log(f"--resume: no checkpoint under {store.root}; starting from the beginning")
        if state is not None:
            data_state = controller.learners.load(str(state.learner_dir))
            if spec.schedule.mode != "sync":
                pending = inflight_rollout(state.path, data_state)
            # With the in-flight rollout reused its prompts were taken already: the stream continues after them.
            controller.load_state_dict(ControllerState(state.step, state.version, data_state["stream"],
                                                       state.eval_history, data_state.get("stream_after_inflight")),
                                       inflight_restored=pending is not None)
            info = {**state.info, **info}
            progress.advance_to(controller.step)
            log(f"resumed from {state.path} (step {state.step}, weight version {state.version})")
            recorder.rewind_to(state.step)
        elif spec.eval.datasets and spec.eval.before_training:
            await evaluate(controller, eval_sets, "before_rl", recorder, log)
        while controller.step < spec.schedule.steps and not stop.is_set():
            if spec.schedule.mode == "sync":
                record = await controller.train_step_sync()
            else:
                # A stop request still lets the next rollout run: the checkpoint saves it, so a resumed run
                # trains on the samples the uninterrupted one would have.
                last_step = controller.step + 1 >= spec.schedule.steps
                record, pending = await controller.train_step_off_policy(pending, last_step)
            controller.step = record.step
            recorder.record_step(record)
            progress.update(record)
            if after_step is not None:
                await after_step(local, controller.step)
            last = controller.step >= spec.schedule.steps
            if spec.eval.interval and controller.step % spec.eval.interval == 0 and not last:
                await evaluate(controller, eval_sets, f"step_{controller.step}", recorder, log)
            if controller.step % spec.checkpoint.interval == 0 or last or stop.is_set():
                await checkpoint(controller, store, info, log, pending)
            export_every = spec.checkpoint.export_interval
            if export_every and controller.step % export_every == 0 and not last:  # the last is final_model
                await asyncio.to_thread(export_model, controller.learners.write_weights, policy_path, tokenizer,
                                        run_dir / "models" / f"step_{controller.step:08d}")
            if reporter is not None:
                latest = store.latest()
                reporter.report(controller.step, controller.version, record.generated.reward_mean,
                                record.generated.accuracy, str(latest.path) if latest else None)
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        if stop.is_set() and controller.step < spec.schedule.steps:
            log(f"stopped at step {controller.step}; continue with: forkrl train <spec> --resume")
            return 0
        if spec.eval.datasets:
            await evaluate(controller, eval_sets, "after_rl", recorder, log)
        final = run_dir / "final_model"
        await asyncio.to_thread(export_model, controller.learners.write_weights, policy_path, tokenizer, final)
        finish_run(spec, run_dir, controller.eval_history, read_step_records(recorder.jsonl_path),
                   read_eval_records(recorder.jsonl_path), info, controller.entropy_sample, log,
                   metrics_url=recorder.url)
        return 0
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        progress.close()
        recorder.close()
        await local.stop()


def train_main(spec_path: str, resume: bool = False, quiet: bool = False, settings: Sequence[str] = ()) -> int:
    """Entry point of `forkrl train`: exit 0 on success or a clean stop, 2 on a bad spec or pre-flight.
    `settings`: `--set FIELD=VALUE` assignments applied to the spec file before validation."""
    try:
        spec, _ = load_spec_with_settings(spec_path, settings)
    except SpecError as err:
        print(err, file=sys.stderr)
        return 2
    try:
        return asyncio.run(run(spec, resume, quiet))
    except PreflightError as err:
        print(f"forkrl train: {err}", file=sys.stderr)
        return 2
    except LearnerFailure as err:
        if err.during == "setup":
            hint = "the learner could not start: fix the spec or the cluster named above, then run again"
        else:
            given = "".join(f" --set {shlex.quote(text)}" for text in settings)
            hint = (f"the run stopped; continue from the last checkpoint with "
                    f"`forkrl train {spec_path}{given} --resume` once the learner nodes are back")
        print(f"forkrl train: {err}\nforkrl train: {hint}", file=sys.stderr)
        return 1
