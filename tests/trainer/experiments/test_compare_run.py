"""A real `forkrl compare` (2 objectives x 2 seeds of the tiny spec): interrupted in its second arm, then
resumed as Ray tasks; only the unfinished arms run again, the interrupted one from its checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

TINY = Path(__file__).with_name("tiny.yaml")
ARMS = [("dapo", 0), ("dapo", 1), ("forking-top20", 0), ("forking-top20", 1)]


def compare(workdir: Path, *extra: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "forkrl.trainer.cli", "compare", str(TINY), "--workdir", str(workdir),
            "--objectives", "dapo,forking-top20", "--seeds", "0,1", "--set", "schedule.steps=4", *extra]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


def arm_dir(workdir: Path, label: str, seed: int) -> Path:
    return workdir / "arms" / label / f"seed{seed}"


def train_records(directory: Path) -> int:
    metrics = directory / "run" / "metrics.jsonl"
    if not metrics.exists():
        return 0
    return sum(json.loads(line)["kind"] == "train" for line in metrics.read_text().splitlines() if line.strip())


@pytest.mark.slow
def test_compare_resumes_only_unfinished_arms_and_reports_every_seed(tmp_path: Path) -> None:
    workdir = tmp_path / "experiment"
    first = compare(workdir)
    second_arm = arm_dir(workdir, "dapo", 1)
    try:
        deadline = time.monotonic() + 600
        while train_records(second_arm) < 1:  # the first arm is done, the second is training
            assert first.poll() is None, f"compare ended early:\n{first.communicate()[0][-4000:]}"
            assert time.monotonic() < deadline, "the second arm never recorded a step"
            time.sleep(0.2)
        first.send_signal(signal.SIGTERM)
        output, _ = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert first.returncode == 130, output[-4000:]
    assert "Run the same command again to resume" in output
    finished = arm_dir(workdir, "dapo", 0)
    assert (finished / "done.json").exists()
    assert not (second_arm / "done.json").exists(), "the interrupted arm must not count as finished"
    assert list((second_arm / "checkpoints").glob("step_*")), "the interrupted arm checkpointed on SIGTERM"
    steps_before_resume = train_records(second_arm)
    assert 1 <= steps_before_resume < 4
    finished_log = (finished / "train.log").read_text()
    finished_marker = (finished / "done.json").stat().st_mtime_ns
    report = workdir / "report" / "compare.json"
    assert json.loads(report.read_text())["pending_arms"] == ["dapo seed 1", "forking-top20 seed 0",
                                                              "forking-top20 seed 1"]

    second = compare(workdir, "--ray-address", "local", "--cpus-per-arm", "1")
    output, _ = second.communicate(timeout=900)
    assert second.returncode == 0, output[-4000:]
    assert "4 arms, 1 finished before, 3 to run" in output
    # The finished arm was not run again; the interrupted one resumed from its checkpoint.
    assert (finished / "train.log").read_text() == finished_log
    assert (finished / "done.json").stat().st_mtime_ns == finished_marker
    resumed_log = (second_arm / "train.log").read_text()
    assert resumed_log.count("\n=== ") == 2 and "--resume" in resumed_log.split("\n=== ")[-1]
    assert "resumed from" in resumed_log
    assert json.loads((second_arm / "done.json").read_text())["resumed"] is True
    for label, seed in ARMS:
        directory = arm_dir(workdir, label, seed)
        assert (directory / "done.json").exists(), label
        assert train_records(directory) == 4, f"{label} seed {seed}: one record per step, none repeated"

    payload = json.loads(report.read_text())
    assert payload["pending_arms"] == [] and payload["dataset"] == "heldout"
    groups = {g["label"]: g for g in payload["groups"]}
    assert set(groups) == {"dapo", "forking-top20"}
    for group in groups.values():
        assert sorted(group["seeds"]) == [0, 1]
        assert group["updates"]["mean"] == 4  # 4 steps x 1 mini-batch: equal compute per arm
        assert group["trained_samples"]["mean"] == 4 * 4 * 4
        assert [b["step"] for b in group["curves"]["mean entropy (nats)"]] == [1, 2, 3, 4]
    markdown = (workdir / "report" / "compare.md").read_text()
    assert "| dapo | 2 |" in markdown and "| forking-top20 | 2 |" in markdown
    assert (workdir / "report" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # Both objectives started from the one shared cold start.
    starts = {yaml.safe_load((arm_dir(workdir, label, seed) / "spec.yaml").read_text())["model"]["path"]
              for label, seed in ARMS}
    assert starts == {str((workdir / "cold-start" / "cold_start_model").resolve())}
