"""The recorder's three sinks: Prometheus over HTTP, JSONL, TensorBoard event files."""

from __future__ import annotations

from pathlib import Path

import httpx

from forkrl.trainer.controller.recorder import Recorder, read_records


def test_prometheus_jsonl_and_tensorboard(tmp_path: Path) -> None:
    recorder = Recorder("unit", tmp_path, metrics_port=0, tensorboard=True)
    try:
        recorder.record(1, {"reward/mean": 0.25, "accuracy": 0.5, "entropy/p90": 1.5, "clip_frac/high": 0.125,
                            "clip_frac": 0.0625, "kl/low": 0.01, "time/rollout": 2.0, "samples": 16,
                            "forking/threshold": 0.9, "weight_version_lag/max": 1, "time/step": 3.0})
        recorder.record(1, {"eval/heldout/avg": 0.4}, kind="eval")
        text = httpx.get(f"http://127.0.0.1:{recorder.port}/metrics", timeout=5).text
    finally:
        recorder.close()
    assert 'forkrl_trainer_reward{run="unit"} 0.25' in text
    assert 'forkrl_trainer_accuracy_ratio{run="unit"} 0.5' in text
    assert 'forkrl_trainer_entropy_nats{quantile="0.9",run="unit"} 1.5' in text
    assert 'forkrl_trainer_clip_ratio{run="unit",token_type="high"} 0.125' in text
    assert 'forkrl_trainer_clip_ratio{run="unit",token_type="all"} 0.0625' in text
    assert 'forkrl_trainer_kl_nats{run="unit",token_type="low"} 0.01' in text
    assert 'forkrl_trainer_phase_seconds{phase="rollout",run="unit"} 2.0' in text
    assert 'forkrl_trainer_samples_total{run="unit"} 16.0' in text
    assert 'forkrl_trainer_forking_threshold_nats{run="unit"} 0.9' in text
    assert 'forkrl_trainer_eval_accuracy_ratio{dataset="heldout",run="unit"} 0.4' in text
    assert 'forkrl_trainer_step_duration_seconds_count{run="unit"} 1.0' in text
    train = read_records(tmp_path / "metrics.jsonl", "train")
    assert len(train) == 1 and train[0]["accuracy"] == 0.5
    assert read_records(tmp_path / "metrics.jsonl", "eval")[0]["eval/heldout/avg"] == 0.4
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
