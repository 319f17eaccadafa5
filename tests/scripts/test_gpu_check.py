"""scripts/gpu-check.sh's pieces that run without a GPU: its refusal on a machine without CUDA, the summary's
reading of a real pytest JUnit report, and the bench line read back from bench/learner.py's own formatting."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "bench"))

from gpu_summary import bench_figures, junit_outcomes  # noqa: E402
from learner import gpu_bench_line  # noqa: E402


def test_outcomes_come_from_a_real_junit_report(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "def test_ok():\n    assert True\n"
        "def test_bad():\n    assert 1 == 2, 'one is not two'\n"
        "@pytest.mark.skip(reason='no device')\ndef test_skipped():\n    pass\n"
    )
    junit = tmp_path / "tests.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                    f"--junitxml={junit}", "test_sample.py"], cwd=tmp_path, capture_output=True, check=False)
    outcomes = {o["test"].rsplit("::", 1)[1]: o for o in junit_outcomes(junit)}
    assert {name: o["outcome"] for name, o in outcomes.items()} == {
        "test_ok": "passed", "test_bad": "failed", "test_skipped": "skipped"}
    assert "one is not two" in outcomes["test_bad"]["message"]
    assert outcomes["test_skipped"]["message"].endswith("no device")
    assert junit_outcomes(tmp_path / "missing.xml") == []


def test_the_bench_line_round_trips(tmp_path: Path) -> None:
    args = argparse.Namespace(gpu_sequences=64, gpu_width=2048, gpu_micro_batch_size=4)
    line = gpu_bench_line("NVIDIA H200", args, tokens_per_s=123456.7, mfu=0.4213, peak_tflops=989.4,
                          peak_gpu_mib=20480.4)
    log = tmp_path / "bench.log"
    log.write_text(f"warming up\n{line}\n")
    assert bench_figures(log) == {"device": "NVIDIA H200", "tokens_per_s": 123457.0, "mfu_percent": 42.1,
                                  "peak_tflops": 989.4, "peak_gpu_mib": 20480.0}
    log.write_text("Traceback (most recent call last): ...\n")
    assert bench_figures(log) is None


def test_without_cuda_the_check_stops_at_once_and_says_why(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu-check.sh"), str(tmp_path / "out")],
                            env={**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "no CUDA device visible" in result.stderr
    assert not (tmp_path / "out" / "summary.json").exists()
