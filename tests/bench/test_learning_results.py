"""bench/learning.py's saved (arm, seed) results: a rerun with the same settings reuses them exactly, a rerun
under other settings does not."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from learning import ArmResult  # noqa: E402
from learning_eval import HeldoutScore  # noqa: E402


def test_a_saved_result_round_trips_only_under_its_fingerprint(tmp_path: Path) -> None:
    score = HeldoutScore(model="m", problems=3, avg_at_k=0.5, pass_at_k={1: 0.5, 4: 0.75},
                         per_problem=(0.25, 0.5, 0.75), any_format=0.6, seconds=1.5)
    result = ArmResult("forkrl-ds", 2, rl_seconds=81.5, generated_tokens=123_456, score=score)
    path = tmp_path / "forkrl-ds-seed2.json"
    result.save(path, "abc")
    assert ArmResult.load(path, "abc") == result
    assert ArmResult.load(path, "other settings") is None
    assert ArmResult.load(tmp_path / "missing.json", "abc") is None
