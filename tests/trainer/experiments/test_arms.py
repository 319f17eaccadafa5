"""Arms of compare and sweep: every preset is a valid spec, overrides land where named, bad input is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from forkrl.trainer.experiments.arms import (
    OBJECTIVE_PRESETS,
    arm_spec_data,
    compare_arms,
    compute_settings,
    parse_grid,
    sweep_arms,
    unequal_compute,
    validate_arms,
)
from forkrl.trainer.experiments.runner import prepare_jobs
from forkrl.trainer.spec import SpecError, load_spec
from forkrl.trainer.spec.overrides import parse_settings, set_field

TINY = Path(__file__).with_name("tiny.yaml")


@pytest.fixture(scope="module")
def base() -> dict:
    return load_spec(TINY).model_dump(mode="json")


def test_every_objective_preset_is_a_valid_spec_that_differs_only_in_its_objective(base: dict) -> None:
    arms = compare_arms(list(OBJECTIVE_PRESETS), seeds=[0, 5])
    specs = validate_arms(base, arms)
    assert len(specs) == 2 * len(OBJECTIVE_PRESETS)
    for arm, spec in specs.items():
        preset = OBJECTIVE_PRESETS[arm.label]
        dumped = spec.objective.model_dump(mode="json")
        assert {k: dumped[k] for k in preset} == preset
        assert spec.seed == arm.seed
        # Everything that decides compute is the base spec's.
        assert spec.schedule.model_dump() == specs[arms[0]].schedule.model_dump()
    assert unequal_compute(specs) == []
    assert len({arm.run_name for arm in arms}) == len(arms)
    assert all(len(arm.run_name) <= 52 for arm in arms)
    by_label = {arm.label: specs[arm] for arm in arms if arm.seed == 0}
    assert by_label["forking-bottom80"].objective.select == "bottom"
    assert by_label["forking-bottom80"].objective.rho == 0.8
    assert by_label["entropy-advantage"].objective.entropy_advantage is not None
    assert by_label["archer"].objective.name == "archer"


def test_sweep_is_the_cartesian_product_and_names_its_fields(base: dict) -> None:
    grid = parse_grid(["objective.rho=0.1,0.2,0.5", "objective.clip_eps_high=0.28,0.4"])
    assert grid == {"objective.rho": [0.1, 0.2, 0.5], "objective.clip_eps_high": [0.28, 0.4]}
    arms = sweep_arms(grid, seeds=[0, 1])
    assert len(arms) == 3 * 2 * 2
    specs = validate_arms(base, arms)
    seen = {(specs[a].objective.rho, specs[a].objective.clip_eps_high) for a in arms}
    assert seen == {(r, c) for r in (0.1, 0.2, 0.5) for c in (0.28, 0.4)}
    assert arms[0].label == "objective.rho=0.1 objective.clip_eps_high=0.28"
    assert len({a.key for a in arms}) == len(arms)


def test_a_sweep_of_a_compute_field_is_reported_as_unequal_only_when_not_swept(base: dict) -> None:
    arms = sweep_arms(parse_grid(["schedule.steps=1,2"]), seeds=[0])
    specs = validate_arms(base, arms)
    assert unequal_compute(specs) == ["schedule"]
    assert unequal_compute(specs, swept=["schedule.steps"]) == []
    assert compute_settings(specs[arms[1]])["schedule"]["steps"] == 2


def test_bad_arms_fail_before_anything_runs_naming_arm_and_field(base: dict) -> None:
    arms = sweep_arms(parse_grid(["objective.rho=0.2,1.5", "schedule.stepz=3"]), seeds=[0])
    with pytest.raises(SpecError) as err:
        validate_arms(base, arms)
    text = str(err.value)
    assert "objective.rho=1.5" in text and "rho" in text and "less than or equal to 1" in text
    assert "schedule.stepz" in text
    with pytest.raises(SpecError, match="unknown nonsense"):
        compare_arms(["dapo", "nonsense"], [0])
    with pytest.raises(SpecError, match="listed twice"):
        parse_grid(["objective.rho=0.1,0.1"])
    with pytest.raises(SpecError, match="expected FIELD=VALUE"):
        parse_grid(["objective.rho"])
    with pytest.raises(SpecError, match="is a value, not a section"):
        set_field({"seed": 3}, "seed.x", 1)


def test_set_takes_one_yaml_value_with_commas(base: dict) -> None:
    settings = parse_settings(["eval.pass_k=[1, 2]", "schedule.steps=3"])
    assert settings == {"eval.pass_k": [1, 2], "schedule.steps": 3}
    data = arm_spec_data(base, compare_arms(["dapo"], [4])[0])
    for field, value in settings.items():
        set_field(data, field, value)
    assert data["eval"]["pass_k"] == [1, 2] and data["schedule"]["steps"] == 3 and data["seed"] == 4


def test_an_arm_folder_made_under_another_spec_is_refused(base: dict, tmp_path: Path) -> None:
    arms = compare_arms(["dapo"], [0])
    jobs = prepare_jobs(base, validate_arms(base, arms), tmp_path, "/models/cold")
    spec_text = jobs[0].spec_path.read_text()
    assert "/models/cold" in spec_text and str(jobs[0].run_dir) in spec_text
    again = prepare_jobs(base, validate_arms(base, arms), tmp_path, "/models/cold")  # same spec: resumable
    assert again == jobs
    changed = {**base, "schedule": {**base["schedule"], "steps": 7}}
    with pytest.raises(SpecError, match="different spec"):
        prepare_jobs(changed, validate_arms(changed, arms), tmp_path, "/models/cold")
    assert jobs[0].spec_path.read_text() == spec_text
