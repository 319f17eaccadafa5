"""The main job learns: `forkrl train examples/local-arith.yaml` (the README's first command) must end with
held-out accuracy at least 5 points above the cold start's, with a paired 95% CI that excludes zero, and the
gain must be answers, not format: every cold-start solution already ends in the rewarded `\\boxed{}`, so
(nearly) every sample gives an extractable answer before RL as after."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "local-arith.yaml"


@pytest.mark.slow
@pytest.mark.exclusive
@pytest.mark.timeout(1800)
def test_main_job_improves_heldout_accuracy(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "forkrl.trainer.cli", "train", str(EXAMPLE), "--quiet"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "local-arith" / "summary.json").read_text())
    heldout = summary["comparison"]["arith-heldout"]
    assert heldout["problems"] == 500
    assert heldout["after"] - heldout["before"] == pytest.approx(heldout["difference"])
    assert heldout["difference"] >= 0.05, heldout
    assert heldout["ci95_low"] > 0, heldout
    assert heldout["answered_before"] >= 0.98 and heldout["answered_after"] >= 0.98, heldout
    assert "accuracy after cold start" in result.stderr + result.stdout
