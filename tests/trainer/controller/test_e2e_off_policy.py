"""The one-step-off-policy schedule through SIGTERM and --resume (a `slow` module of its own, so the rest of
the end-to-end tests can share a pytest-xdist lane with other modules)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch

from forkrl.trainer.controller.recorder import read_records, read_step_records
from tests.trainer.controller.test_e2e import STEPS, _final_weights, forkrl_train, write_spec

OFF_POLICY = {"mode": "one_step_off_policy"}


@pytest.mark.slow
def test_off_policy_sigterm_checkpoints_and_resume_matches_uninterrupted(tmp_path: Path) -> None:
    """The off-policy checkpoint keeps the in-flight rollout (generated with the weights before the last
    update, which a resumed run no longer has) and the cursor it started from: no prompt is skipped, and the
    final weights are bitwise the uninterrupted run's."""
    reference = write_spec(tmp_path / "reference", schedule=OFF_POLICY)
    process = forkrl_train(reference)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    reference_records = read_step_records(reference.parent / "runs/smoke/metrics.jsonl")
    assert [r.staleness.lag_max for r in reference_records] == [0, 1, 1]

    spec = write_spec(tmp_path / "interrupted", schedule=OFF_POLICY)
    run_dir = spec.parent / "runs" / "smoke"
    process = forkrl_train(spec)
    deadline = time.monotonic() + 600
    while not read_records(run_dir / "metrics.jsonl", "train") and time.monotonic() < deadline \
            and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    latest = run_dir / "checkpoints" / (run_dir / "checkpoints/latest").read_text()
    assert 1 <= json.loads((latest / "controller.json").read_text())["step"] < STEPS
    assert (latest / "inflight_rollout.pt").exists()

    resumed = forkrl_train(spec, "--resume")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    records = read_step_records(run_dir / "metrics.jsonl")
    assert [r.step for r in records] == list(range(1, STEPS + 1))
    # The resumed steps trained on the very samples of the uninterrupted run.
    assert [r.trained for r in records] == [r.trained for r in reference_records]
    expected, got = _final_weights(reference.parent / "runs" / "smoke"), _final_weights(run_dir)
    assert expected.keys() == got.keys() and expected
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
