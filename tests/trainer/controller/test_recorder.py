"""The recorder's three sinks: Prometheus over HTTP, JSONL, TensorBoard event files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import httpx
import pytest

from forkrl.trainer.controller.recorder import (
    Recorder,
    read_eval_records,
    read_records,
    read_step_records,
    truncate_records,
)
from forkrl.trainer.controller.summary import finish_run
from forkrl.trainer.metrics import EvalRecord, StepRecord, flatten
from forkrl.trainer.spec import load_spec
from tests.trainer.metrics.builders import step_record


def _with_accuracy(step: int, accuracy: float) -> StepRecord:
    record = step_record(step)
    return dataclasses.replace(record, generated=dataclasses.replace(record.generated, accuracy=accuracy))


def test_prometheus_jsonl_and_tensorboard(tmp_path: Path) -> None:
    record = step_record(1)
    recorder = Recorder("unit", tmp_path, metrics_port=0, tensorboard=True)
    try:
        recorder.record_step(record)
        recorder.record_eval(EvalRecord(step=1, phase="step_1", dataset="heldout", avg=0.4, pass_at={"1": 0.4}))
        text = httpx.get(f"http://127.0.0.1:{recorder.port}/metrics", timeout=5).text
    finally:
        recorder.close()
    learner = record.learner
    assert learner is not None and learner.forking is not None and record.entropy is not None
    expected = {
        'forkrl_trainer_reward{run="unit"}': record.generated.reward_mean,
        'forkrl_trainer_accuracy_ratio{run="unit"}': record.generated.accuracy,
        'forkrl_trainer_trained_accuracy_ratio{run="unit"}': 0.375,
        'forkrl_trainer_entropy_nats{quantile="0.9",run="unit"}': record.entropy.p90,
        'forkrl_trainer_clip_ratio{run="unit",token_type="high"}': 0.125,
        'forkrl_trainer_clip_ratio{run="unit",token_type="all"}': 0.0625,
        'forkrl_trainer_kl_nats{run="unit",token_type="low"}': 0.0125,
        'forkrl_trainer_phase_seconds{phase="rollout",run="unit"}': 2.0,
        'forkrl_trainer_generated_samples_total{run="unit"}': 16.0,
        'forkrl_trainer_dropped_groups_total{reason="dynamic_sampling",run="unit"}': 3.0,
        'forkrl_trainer_forking_threshold_nats{run="unit"}': learner.forking.threshold,
        'forkrl_trainer_selected_token_ratio{run="unit"}': 80 / 400,
        'forkrl_trainer_eval_accuracy_ratio{dataset="heldout",run="unit"}': 0.4,
        'forkrl_trainer_step_duration_seconds_count{run="unit"}': 1.0,
        'forkrl_trainer_weight_version{run="unit"}': 1.0,
        'forkrl_learner_loss{run="unit"}': learner.loss,
        'forkrl_learner_peak_memory_bytes{run="unit"}': learner.peak_memory_mib * 2**20,
    }
    exported = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    for series, value in expected.items():
        assert float(exported[series]) == pytest.approx(value), series
    assert read_step_records(tmp_path / "metrics.jsonl") == [record]
    assert read_eval_records(tmp_path / "metrics.jsonl")[0].pass_at == {"1": 0.4}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/generated/accuracy", "train/learner/clip_frac/high", "train/entropy/p99", "eval/avg"} <= tags


def test_metrics_url_is_logged_and_serves(tmp_path: Path) -> None:
    logs: list[str] = []
    recorder = Recorder("unit", tmp_path, metrics_port=0, tensorboard=False, log=logs.append)
    try:
        recorder.record_step(step_record(3))
        assert len(logs) == 1 and logs[0].startswith("metrics: http://127.0.0.1:")
        url = logs[0].removeprefix("metrics: ")
        port = int(url.removeprefix("http://127.0.0.1:").removesuffix("/metrics"))
        assert port > 0 and recorder.url == url
        assert 'forkrl_trainer_step{run="unit"} 3.0' in httpx.get(url, timeout=5).text
    finally:
        recorder.close()
    off = Recorder("unit", tmp_path / "off", metrics_port=None, tensorboard=False, log=logs.append)
    off.close()
    assert off.url is None and len(logs) == 1


def test_summary_records_the_metrics_url(tmp_path: Path) -> None:
    spec = load_spec(Path(__file__).parent / "smoke.yaml")
    spec = spec.model_copy(update={"observability": spec.observability.model_copy(update={"report": False})})
    finish_run(spec, tmp_path, [], [step_record(1)], [], {"cold_start_seconds": 2.0}, [], lambda _: None,
               metrics_url="http://127.0.0.1:4321/metrics")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["metrics_url"] == "http://127.0.0.1:4321/metrics"
    assert summary["steps"] == 1 and summary["cold_start_seconds"] == 2.0


def _crashed_run_lines() -> list[str]:
    """A run killed after step 7 whose last checkpoint is step 5: eval before RL (step 0) and every 3
    steps, train records for steps 1..7, then half a line."""
    lines = [json.dumps({"kind": "eval", "step": 0, "time": 0.0, "eval/heldout/avg": 0.1})]
    for step in range(1, 8):
        lines.append(json.dumps({"kind": "train", "time": float(step), **flatten(_with_accuracy(step, step / 10))}))
        if step % 3 == 0:
            lines.append(json.dumps({"kind": "eval", "step": step, "time": step + 0.5,
                                     "eval/heldout/avg": step / 100}))
    return [*lines, '{"kind": "train", "step": 8.0, "ti']


def test_resume_after_a_crash_truncates_to_the_checkpoint(tmp_path: Path) -> None:
    original = "\n".join(_crashed_run_lines())
    (tmp_path / "metrics.jsonl").write_text(original)
    logs: list[str] = []
    recorder = Recorder("unit", tmp_path, metrics_port=None, tensorboard=False, log=logs.append)
    try:
        aside = recorder.rewind_to(5)
        recorder.record_step(_with_accuracy(6, 0.9))  # the resumed run trains step 6 again
    finally:
        recorder.close()
    train = read_records(tmp_path / "metrics.jsonl", "train")
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert [r["generated/accuracy"] for r in train] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.9]
    evals = read_records(tmp_path / "metrics.jsonl", "eval")
    assert [(r["step"], r["eval/heldout/avg"]) for r in evals] == [(0, 0.1), (3, 0.03)]
    assert aside is not None and aside.parent == tmp_path
    assert aside.name.startswith("metrics.jsonl.before-resume-")
    assert aside.read_text() == original
    assert len(logs) == 1 and str(aside) in logs[0]


def test_truncation_is_a_no_op_after_a_clean_stop(tmp_path: Path) -> None:
    kept = [line for line in _crashed_run_lines()[:-1] if json.loads(line)["step"] <= 5]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(kept) + "\n")
    assert truncate_records(path, 5) is None
    assert path.read_text() == "\n".join(kept) + "\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
    assert truncate_records(tmp_path / "missing.jsonl", 5) is None


def test_tensorboard_forgets_steps_past_the_checkpoint(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recorder = Recorder("unit", tmp_path, metrics_port=None, tensorboard=True)
    try:
        for step in range(1, 8):
            recorder.record_step(_with_accuracy(step, step / 10))
        recorder.rewind_to(5)
        recorder.record_step(_with_accuracy(6, 0.9))
    finally:
        recorder.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = events.Scalars("train/generated/accuracy")
    assert [s.step for s in scalars] == [1, 2, 3, 4, 5, 6]
    assert scalars[-1].value == pytest.approx(0.9)
