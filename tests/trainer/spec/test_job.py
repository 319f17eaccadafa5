"""RLVRJobSpec: valid specs parse, unknown keys and out-of-range values fail naming the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from forkrl.trainer.objectives import ArcherConfig, ForkingConfig
from forkrl.trainer.spec import SpecError, load_spec, parse_spec

MINIMAL = {
    "name": "unit",
    "model": {"tiny": {}},
    "data": {"train": [{"name": "arith", "arithmetic": {}, "count": 16}]},
}


def with_changes(**changes) -> dict:
    data = json.loads(json.dumps(MINIMAL))
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return data


def test_minimal_spec_gets_documented_defaults() -> None:
    spec = parse_spec(MINIMAL)
    assert isinstance(spec.objective, ForkingConfig) and spec.objective.rho == 0.2
    assert spec.rollout.engine == "hf" and spec.schedule.mode == "sync"
    assert spec.overlong.cache_for(spec.model.max_response_tokens) == 256 // 5


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"objective": {"name": "forking", "rho": 1.5}}, "objective.forking.rho"),
        ({"objective": {"name": "magic"}}, "objective"),
        ({"surprise": 1}, "surprise"),
        ({"schedule__train_batch_size": 6, "schedule__mini_batch_size": 4}, "schedule.mini_batch_size"),
        ({"learner": {"parallel": {"tensor_parallel": 2}}, "resources__learner_ranks": 3}, "resources.learner_ranks"),
        ({"name": "Bad_Name"}, "name"),
        ({"rollout__sampling": {"top_p": 1.5}}, "rollout.sampling.top_p"),
        ({"model": {"tiny": {}, "path": "/models/x"}}, "model"),
        ({"overlong__cache_tokens": 1000}, "overlong.cache_tokens"),
        ({"eval__pass_k": [4], "eval__samples_per_problem": 2}, "eval.pass_k"),
        ({"schedule__mode": "one_step_off_policy", "schedule__max_staleness": 0}, "schedule.max_staleness"),
    ],
)
def test_bad_specs_name_the_field(changes: dict, field: str) -> None:
    data = {**MINIMAL, **{k: v for k, v in changes.items() if "__" not in k}}
    data = json.loads(json.dumps(data))
    for dotted, value in changes.items():
        if "__" in dotted:
            parent, leaf = dotted.split("__")
            data.setdefault(parent, {})[leaf] = value
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        parse_spec(data)


def test_archer_kl_needs_a_reference_model() -> None:
    data = with_changes(objective={"name": "archer"}, learner={"reference": {"enabled": False}})
    with pytest.raises(SpecError, match="reference"):
        parse_spec(data)
    assert isinstance(parse_spec(with_changes(objective={"name": "archer"})).objective, ArcherConfig)


def test_load_spec_resolves_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(with_changes(data={"train": [{"name": "d", "path": "data/train.jsonl"}]})))
    spec = load_spec(spec_file)
    assert spec.data.train[0].path == str(tmp_path / "data" / "train.jsonl")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "missing.yaml")


def test_cli_schema_and_validate(tmp_path: Path) -> None:
    schema = json.loads(subprocess.run([sys.executable, "-m", "forkrl.trainer.cli", "config", "schema"],
                                       capture_output=True, text=True, check=True).stdout)
    assert schema["title"] == "RLVRJobSpec"
    assert "objective" in schema["properties"] and "name" in schema["required"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_changes(objective={"name": "forking", "rho": 7})))
    result = subprocess.run([sys.executable, "-m", "forkrl.trainer.cli", "config", "validate", str(bad)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "objective.forking.rho" in result.stderr and "(got 7)" in result.stderr


@pytest.mark.parametrize(
    ("sampling", "learner_temperature", "named"),
    [
        ({"temperature": 0.7, "top_p": 1.0}, None, "rollout.sampling.temperature=0.7"),
        ({"temperature": 1.0}, 0.7, "rollout.sampling.temperature=1.0"),
        ({"temperature": 0.0}, None, "rollout.sampling.temperature=0.0"),  # greedy: no learner temperature fits
        ({"top_p": 0.9}, None, "rollout.sampling.temperature must be set"),  # would be the model's generation config
        ({"dual_temperature": {"t_high": 1.0, "t_low": 0.8}}, None, "rollout.sampling.dual_temperature.t_low=0.8"),
        ({"dual_temperature": {"t_high": 1.3, "t_low": 1.0}}, 1.3, "rollout.sampling.dual_temperature.t_low=1.0"),
    ],
)
def test_learner_temperature_must_be_the_rollouts(sampling: dict, learner_temperature: float | None,
                                                 named: str) -> None:
    learner = {} if learner_temperature is None else {"temperature": learner_temperature}
    with pytest.raises(SpecError) as info:
        parse_spec(with_changes(rollout={"sampling": sampling}, learner=learner))
    assert named in str(info.value) and "learner.temperature" in str(info.value)


@pytest.mark.parametrize(
    ("sampling", "learner_temperature"),
    [
        ({"temperature": 0.7, "top_p": 0.95}, 0.7),
        ({"dual_temperature": {"t_high": 1.3, "t_low": 0.9}}, 0.9),  # the learner takes t_low
        ({"dual_temperature": {"t_high": 1.5}}, 1.0),  # t_low defaults to 1.0
    ],
)
def test_learner_temperature_equal_to_the_rollouts_is_accepted(sampling: dict, learner_temperature: float) -> None:
    spec = parse_spec(with_changes(rollout={"sampling": sampling}, learner={"temperature": learner_temperature}))
    assert spec.learner.temperature == learner_temperature


def test_cpus_per_rollout_is_not_a_spec_field() -> None:
    # It was read nowhere: rollout replicas are processes (local) or pods sized by cluster.rollout.cpu.
    with pytest.raises(SpecError, match=r"resources\.cpus_per_rollout: Extra inputs are not permitted"):
        parse_spec(with_changes(resources={"cpus_per_rollout": 2.0}))
