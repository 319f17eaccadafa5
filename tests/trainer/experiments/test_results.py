"""Combining arms over seeds: values checked against independent computations on constructed records."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path

import pytest

from forkrl.trainer.evaluation import seed_interval, t_quantile_95
from forkrl.trainer.experiments.report import sensitivity, write_report
from forkrl.trainer.experiments.results import ArmResult, bands, main_dataset, summarize
from forkrl.trainer.metrics.records import EntropyPercentiles, EvalRecord
from tests.trainer.metrics.builders import step_record


def t_cdf(x: float, dof: int, pieces: int = 20_000) -> float:
    """Student's t CDF by Simpson's rule on its density (independent of the tabulated quantiles)."""
    c = math.gamma((dof + 1) / 2) / (math.sqrt(dof * math.pi) * math.gamma(dof / 2))

    def density(t: float) -> float:
        return c * (1 + t * t / dof) ** (-(dof + 1) / 2)

    h = x / pieces
    total = density(0) + density(x) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, pieces))
    return 0.5 + total * h / 3


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 9, 10, 20, 30])
def test_tabulated_t_quantiles_are_the_975_point(dof: int) -> None:
    assert t_cdf(t_quantile_95(dof), dof) == pytest.approx(0.975, abs=2e-4)


def test_untabulated_degrees_of_freedom_round_to_a_wider_interval() -> None:
    assert t_quantile_95(11) == t_quantile_95(10) > t_quantile_95(12)
    assert t_cdf(t_quantile_95(11), 11) > 0.975
    assert t_quantile_95(31) == 1.96
    mean, half = seed_interval([0.3, 0.4, 0.5])
    assert mean == pytest.approx(0.4)
    assert half == pytest.approx(t_quantile_95(2) * statistics.stdev([0.3, 0.4, 0.5]) / math.sqrt(3))
    assert seed_interval([0.7]) == (0.7, 0.0)


def arm(label: str, seed: int, before: float, after: float, steps: int = 4) -> ArmResult:
    records = []
    for step in range(1, steps + 1):
        record = step_record(step)
        entropy = dataclasses.replace(record.entropy, mean=float(step + seed))  # type: ignore[arg-type]
        generated = dataclasses.replace(record.generated, response_length_mean=10.0 * seed + step)
        records.append(dataclasses.replace(record, entropy=entropy, generated=generated))
    evals = (EvalRecord(step=0, phase="before_rl", dataset="heldout", avg=before, pass_at={"1": before}),
             EvalRecord(step=2, phase="step_2", dataset="heldout", avg=(before + after) / 2, pass_at={"1": 0.0}),
             EvalRecord(step=steps, phase="after_rl", dataset="heldout", avg=after,
                        pass_at={"1": after, "4": min(1.0, 2 * after)}))
    comparison = {"heldout": {"before": before, "after": after, "difference": after - before,
                              "ci95_low": 0.0, "ci95_high": 0.0, "problems": 10.0}}
    return ArmResult(label, seed, tuple(records), evals, comparison)


def test_a_label_summarized_over_seeds() -> None:
    seeds = [arm("dapo", s, before=0.1, after=a) for s, a in enumerate([0.3, 0.4, 0.5])]
    summary = summarize("dapo", seeds, main_dataset(seeds))
    gains = [0.2, 0.3, 0.4]
    assert summary.gain is not None and summary.after is not None
    assert summary.gain.mean == pytest.approx(statistics.fmean(gains))
    assert summary.gain.half_width == pytest.approx(4.303 * statistics.stdev(gains) / math.sqrt(3))
    assert summary.after.mean == pytest.approx(0.4)
    assert summary.pass_at["4"].mean == pytest.approx(statistics.fmean([0.6, 0.8, 1.0]))
    assert summary.seeds == (0, 1, 2)
    # Entropy over the last quarter of 4 steps = the last step: 4 + seed.
    assert summary.final_entropy is not None and summary.final_entropy.mean == pytest.approx(5.0)
    # Each step record generated 16 samples; length 10 * seed + step.
    expected_tokens = [sum(round(16 * (10 * s + t)) for t in range(1, 5)) for s in range(3)]
    assert summary.generated_tokens.mean == pytest.approx(statistics.fmean(expected_tokens))
    assert summary.trained_samples.mean == 4 * 8 and summary.trained_samples.half_width == 0
    entropy_curve = summary.curves["mean entropy (nats)"]
    assert [b.step for b in entropy_curve] == [1, 2, 3, 4]
    assert [b.mean for b in entropy_curve] == pytest.approx([2.0, 3.0, 4.0, 5.0])
    assert all(b.seeds == 3 for b in entropy_curve)
    heldout = summary.curves["held-out accuracy (heldout)"]
    assert [b.step for b in heldout] == [0, 2, 4]
    assert heldout[1].mean == pytest.approx(statistics.fmean([0.2, 0.25, 0.3]))


def test_bands_use_the_seeds_present_at_each_step() -> None:
    result = bands([[(1, 1.0), (2, 3.0)], [(1, 2.0)]])
    assert [(b.step, b.mean, b.seeds) for b in result] == [(1, 1.5, 2), (2, 3.0, 1)]
    assert result[1].half_width == 0.0
    assert result[0].half_width == pytest.approx(12.706 * statistics.stdev([1.0, 2.0]) / math.sqrt(2))


def test_sensitivity_averages_over_seeds_and_the_other_knobs() -> None:
    knobs = {"a": {"rho": 0.1, "eps": 0.2}, "b": {"rho": 0.1, "eps": 0.4}, "c": {"rho": 0.5, "eps": 0.2}}
    results = [arm("a", 0, 0.0, 0.2), arm("a", 1, 0.0, 0.4), arm("b", 0, 0.0, 0.6), arm("c", 0, 0.0, 0.9)]
    out = sensitivity(results, knobs, "heldout")
    rho = {p["value"]: p for p in out["rho"]}
    assert rho[0.1]["mean"] == pytest.approx(0.4) and rho[0.1]["arms"] == 3
    assert rho[0.5]["mean"] == pytest.approx(0.9) and rho[0.5]["half_width"] == 0
    eps = {p["value"]: p for p in out["eps"]}
    assert eps[0.2]["mean"] == pytest.approx(statistics.fmean([0.2, 0.4, 0.9]))


def test_report_files(tmp_path: Path) -> None:
    groups = [summarize(label, [arm(label, s, 0.1, 0.1 + 0.1 * s + offset) for s in range(2)], "heldout")
              for label, offset in (("dapo", 0.0), ("forking-top20", 0.05))]
    sweep = {"objective.rho": [{"value": 0.2, "mean": 0.3, "half_width": 0.1, "arms": 2}]}
    md = write_report(tmp_path, "sweep", groups, {"schedule": {"steps": 4}}, [], ["archer seed 1"], sweep,
                      "heldout")
    text = md.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| dapo") or line.startswith("| forking")]
    assert len(rows) == 2 and "archer seed 1" in text and '"steps": 4' in text
    payload = json.loads((tmp_path / "sweep.json").read_text())
    assert [g["label"] for g in payload["groups"]] == ["dapo", "forking-top20"]
    assert payload["groups"][1]["after"]["mean"] == pytest.approx(statistics.fmean([0.15, 0.25]))
    for name in ("curves.png", "sensitivity-objective.rho.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({name})" in text


def test_an_arm_is_loaded_from_its_run_files(tmp_path: Path) -> None:
    from forkrl.trainer.controller.recorder import Recorder

    recorder = Recorder("r", tmp_path, None, False, "127.0.0.1", log=lambda _: None)
    for step in (1, 2):
        record = step_record(step)
        recorder.record_step(dataclasses.replace(record, entropy=EntropyPercentiles(
            mean=0.5 * step, p10=0.0, p50=0.1, p80=0.2, p90=0.3, p99=0.4)))
    recorder.record_eval(EvalRecord(step=2, phase="after_rl", dataset="d", avg=0.25, pass_at={"1": 0.25}))
    recorder.close()
    (tmp_path / "summary.json").write_text(json.dumps({"comparison": {"d": {"before": 0.1, "after": 0.25,
                                                                           "difference": 0.15}}}))
    loaded = ArmResult.load("x", 3, tmp_path)
    assert [r.entropy.mean for r in loaded.steps if r.entropy] == [0.5, 1.0]
    assert loaded.evals[0].avg == 0.25 and loaded.comparison["d"]["difference"] == 0.15
    assert loaded.updates == 2 and loaded.rl_seconds == pytest.approx(9.0)
