"""`--set FIELD=VALUE`: applied before validation, so a bad path or value is refused naming the field, and the
spec file itself is never changed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from forkrl.trainer.spec import SpecError, load_spec
from forkrl.trainer.spec.overrides import get_field, load_spec_with_settings, parse_settings, set_field

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "local-arith.yaml"


def test_settings_land_on_the_named_fields_and_leave_the_rest_as_in_the_file() -> None:
    original = load_spec(EXAMPLE)
    spec, data = load_spec_with_settings(EXAMPLE, ["schedule.steps=7", "eval.pass_k=[1, 2]", "objective.rho=0.5"])
    assert (spec.schedule.steps, spec.eval.pass_k, spec.objective.rho) == (7, [1, 2], 0.5)
    assert get_field(data, "schedule.steps") == 7
    unchanged = original.model_dump(mode="json")
    for field in ("schedule.steps", "eval.pass_k", "objective.rho"):
        set_field(unchanged, field, get_field(data, field))
    assert unchanged == data, "only the three named fields differ from the file's spec"
    assert load_spec(EXAMPLE) == original


@pytest.mark.parametrize(("assignment", "message"), [
    ("schedule.steps=-3", "schedule.steps"),
    ("schedule.stpes=3", "stpes"),
    ("schedule.steps", "expected FIELD=VALUE"),
    ("seed.x=1", "is a value, not a section"),
    ("eval.pass_k=[1, 2", "not a valid YAML value"),
])
def test_a_bad_setting_is_refused_naming_it(assignment: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        load_spec_with_settings(EXAMPLE, [assignment])


def test_the_same_field_twice_is_refused() -> None:
    with pytest.raises(SpecError, match=r"schedule\.steps is given twice"):
        parse_settings(["schedule.steps=3", "schedule.steps=4"])


def test_forkrl_train_refuses_a_bad_setting_before_starting_anything(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "forkrl.trainer.cli", "train", str(EXAMPLE),
                             "--set", "schedule.steps=0"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "schedule.steps" in result.stderr
    assert not (tmp_path / "runs").exists()
