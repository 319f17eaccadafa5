"""The run report opens in a real browser with every plot present, no console error, labelled axes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from forkrl.trainer.controller.report import FIGURES, write_report
from forkrl.trainer.metrics import EvalRecord
from tests.browser import check_page
from tests.trainer.metrics.builders import step_record


def test_report_shows_every_plot_in_a_browser(tmp_path: Path) -> None:
    steps = [step_record(step) for step in range(1, 6)]
    steps[2] = step_record(3, trained=False)  # a step that trained nothing leaves gaps, not errors
    evals = [EvalRecord(step=s, phase=p, dataset="heldout", avg=a, pass_at={"1": a, "4": min(1.0, 2 * a)})
             for s, p, a in ((0, "before_rl", 0.2), (2, "step_2", 0.3), (5, "after_rl", 0.45))]
    eval_rows = [{"phase": e.phase, "dataset": e.dataset, "avg@4": e.avg} for e in evals]
    page = write_report(tmp_path, "unit <run>", steps, evals, eval_rows, [0.1, 0.5, 2.0] * 50, {"steps": 5})
    check = check_page(page)
    assert check.problems() == [], check.problems()
    assert check.title == "forkrl run unit <run>"
    expected = {"heldout.png", "entropy_hist.png", *(f.file for f in FIGURES)}
    assert {image.src for image in check.images} == expected
    assert all(image.loaded and image.natural_width >= 600 for image in check.images)


def test_report_leaves_out_plots_without_data(tmp_path: Path) -> None:
    """A run with no evaluation and no learner metrics (nothing trained) draws no empty axes."""
    steps = [step_record(step, trained=False) for step in range(1, 3)]
    steps = [dataclasses.replace(s, entropy=None) for s in steps]
    page = write_report(tmp_path, "bare", steps, [], [], [], {})
    check = check_page(page)
    assert check.problems() == [], check.problems()
    drawn = {image.src for image in check.images}
    assert drawn == {"reward.png", "length.png", "time.png"}  # no learner metrics: no lr, clip, KL
    assert not (tmp_path / "clip.png").exists() and not (tmp_path / "heldout.png").exists()


def test_every_plot_names_its_axes_with_units() -> None:
    for figure in FIGURES:
        assert figure.ylabel and figure.title and figure.caption, figure.file
        units = ("fraction", "nats", "tokens", "seconds", "reward", "learning rate")
        assert any(unit in figure.ylabel for unit in units), figure
