"""Pydantic -> structural OpenAPI conversion (operator/schema.py) on small models whose expected schema
is written out by hand, plus the repository's generated files being current."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from forkrl.operator.cel import model_rules
from forkrl.operator.crd import crd_manifest, stale_files, values_schema
from forkrl.operator.resource import RLVRJobResourceSpec
from forkrl.operator.schema import StructuralConverter, cel_literal, constraint_expr, model_json_schema
from forkrl.trainer.cli import main


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x: int = Field(3, ge=1, le=5, description="An x.")


class VariantA(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["a"] = Field("a", description="Selector.")
    rho: float = Field(0.2, gt=0.0, le=1.0, description="Share.")
    shared: str = Field("s", description="Same everywhere.")
    only_a: int = Field(1, ge=0, description="Only in a.")


class VariantB(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["b"] = Field("b", description="Selector.")
    rho: float = Field(0.8, gt=0.0, lt=1.0, description="Quantile.")
    shared: str = Field("s", description="Same everywhere.")

    @model_validator(mode="after")
    def _never(self) -> VariantB:
        return self


class Top(BaseModel):
    """Top model."""

    model_config = ConfigDict(extra="forbid")
    inner: Inner = Field(default_factory=Inner, description="Nested.")
    maybe: int | None = Field(None, ge=0, description="Optional, default None.")
    clip: float | None = Field(10.0, gt=1.0, description="Optional with a default.")
    flag: bool | Literal["auto"] = Field("auto", description="Tri-state.")
    choice: Annotated[VariantA | VariantB, Field(discriminator="name")] = Field(
        default_factory=VariantA, description="A union."
    )
    tags: dict[str, str] = Field(default_factory=dict, description="Free labels.")
    items: list[Inner] = Field(default_factory=list, max_length=4, description="A list.")


def convert(rules: dict | None = None) -> dict:
    return StructuralConverter(model_json_schema(Top), rules).convert_root()


def test_nested_model_is_inlined_with_its_factory_default_and_bounds() -> None:
    inner = convert()["properties"]["inner"]
    assert inner == {
        "type": "object",
        "properties": {"x": {"type": "integer", "minimum": 1, "maximum": 5, "default": 3, "description": "An x."}},
        "description": "Nested.",
        "default": {"x": 3},
    }


def test_optional_fields_are_nullable_only_when_null_differs_from_absent() -> None:
    props = convert()["properties"]
    # default None: a null is pruned by the API server, i.e. absent - the same as None.
    assert props["maybe"] == {"type": "integer", "minimum": 0, "description": "Optional, default None."}
    # default 10: an explicit null (disable) must survive, so the field is nullable and keeps its default.
    assert props["clip"] == {
        "type": "number",
        "minimum": 1.0,
        "exclusiveMinimum": True,
        "nullable": True,
        "description": "Optional with a default.",
        "default": 10.0,
    }


def test_scalar_type_union_keeps_any_value_and_says_so() -> None:
    flag = convert()["properties"]["flag"]
    assert flag["x-kubernetes-preserve-unknown-fields"] is True
    assert "type" not in flag and flag["default"] == "auto"
    assert 'Must be a boolean or "auto"' in flag["description"]


def test_maps_and_lists_are_structural() -> None:
    props = convert()["properties"]
    assert props["tags"] == {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "description": "Free labels.",
        "default": {},
    }
    assert props["items"]["type"] == "array" and props["items"]["maxItems"] == 4
    assert props["items"]["items"]["properties"]["x"]["maximum"] == 5


def test_discriminated_union_becomes_one_object_with_guarded_rules() -> None:
    choice = convert({"VariantB": [{"rule": "self.rho > 0.5", "message": "b needs rho > 0.5"}]})["properties"]["choice"]
    assert choice["required"] == ["name"]
    assert choice["properties"]["name"]["enum"] == ["a", "b"]
    assert choice["default"] == {"name": "a", "rho": 0.2, "shared": "s", "only_a": 1}
    rho = choice["properties"]["rho"]
    # Shared by both variants: type, lower bound and its exclusivity; the upper bound differs.
    assert rho["type"] == "number" and rho["minimum"] == 0.0 and rho["exclusiveMinimum"] is True
    assert "maximum" not in rho and "default" not in rho
    assert choice["properties"]["shared"]["default"] == "s"  # same default in every variant
    assert "default" not in choice["properties"]["only_a"]  # would be injected into variant b
    rules = {r.get("fieldPath", "") + "|" + r["rule"]: r for r in choice["x-kubernetes-validations"]}
    assert rules['.only_a|!has(self.only_a) || self.name in ["a"]']["reason"] == "FieldValueForbidden"
    assert '.rho|!has(self.rho) || self.name != "a" || (self.rho > 0.0 && self.rho <= 1.0)' in rules
    assert '.rho|!has(self.rho) || self.name != "b" || (self.rho > 0.0 && self.rho < 1.0)' in rules
    assert '|self.name != "b" || (self.rho > 0.5)' in rules


def test_cel_literals_and_constraints() -> None:
    assert cel_literal(1e-06, "number") == "1e-06"
    assert cel_literal(3, "number") == "3.0"
    assert cel_literal(3.0, "integer") == "3"
    assert cel_literal("x", "string") == '"x"'
    expr, words = constraint_expr("k", {"type": "integer", "minimum": 1, "maximum": 9, "nullable": True})
    assert expr == "type(self.k) == null_type || (self.k >= 1 && self.k <= 9)"
    assert words == ">= 1 and <= 9"


def test_every_model_validator_of_the_spec_has_cel_rules() -> None:
    """A new model_validator in the spec tree must get its CEL mirror (operator/cel.py)."""
    rules = model_rules()
    seen: set[type[BaseModel]] = set()

    def walk(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.add(model)
        for field in model.model_fields.values():
            for candidate in _models_in(field.annotation):
                walk(candidate)

    walk(RLVRJobResourceSpec)
    with_validators = {m.__name__ for m in seen if m.__pydantic_decorators__.model_validators}
    # RLVRJobSpec's own rules are attached to the resource spec that extends it.
    expected = (with_validators - {"RLVRJobSpec"}) | {"RLVRJobResourceSpec"}
    assert expected <= set(rules), f"models without CEL rules: {sorted(expected - set(rules))}"


def _models_in(annotation: object) -> list[type[BaseModel]]:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def test_crd_has_status_subresource_printer_columns_and_root_rules() -> None:
    crd = crd_manifest()
    version = crd["spec"]["versions"][0]
    assert crd["spec"]["names"]["shortNames"] == ["rlvr"] and crd["spec"]["scope"] == "Namespaced"
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]][:5] == [
        "Phase",
        "Step",
        "Reward",
        "Accuracy",
        "Objective",
    ]
    root = version["schema"]["openAPIV3Schema"]
    assert any("self.metadata.name" in r["rule"] for r in root["x-kubernetes-validations"])
    status = root["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == ["Pending", "Running", "Succeeded", "Failed", "Suspended"]
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    assert set(status["conditions"]["items"]["required"]) == {"type", "status", "reason", "lastTransitionTime"}


def test_values_schema_is_the_spec_plus_metadata() -> None:
    schema = values_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"model", "data"}
    assert {"metadata", "cluster", "objective", "suspend", "global"} <= set(schema["properties"])


def test_generated_files_in_the_repository_are_current() -> None:
    assert stale_files() == [], "run `forkrl crd --write` and commit the result"


def test_forkrl_crd_command_prints_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:

    assert main(["crd"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == crd_manifest()
    assert main(["crd", "--check"]) == 0
    assert main(["crd", "--write", "--root", str(tmp_path)]) == 0
    assert main(["crd", "--check", "--root", str(tmp_path)]) == 0
    crd = tmp_path / "helm/forkrl/files/crds/rlvrjobs.forkrl.dev.yaml"
    crd.write_text(crd.read_text().replace("maximum: 1.0", "maximum: 2.0", 1))
    capsys.readouterr()
    assert main(["crd", "--check", "--root", str(tmp_path)]) == 1
    assert "stale: helm/forkrl/files/crds/rlvrjobs.forkrl.dev.yaml" in capsys.readouterr().err
