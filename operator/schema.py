"""Pydantic JSON schema -> structural OpenAPI v3 schema for a CustomResourceDefinition.

Kubernetes accepts only *structural* schemas: every node has a `type`, no `$ref`, no `anyOf`/`oneOf`
choosing between types. The conversion keeps descriptions, defaults (default factories included, so the
API server fills in whole nested objects), enums, ranges, lengths, patterns and required fields:

- `$ref` is inlined; `anyOf [X, null]` becomes X with `nullable: true`.
- A discriminated union (`oneOf` + `discriminator`) becomes one object: the tag is a required enum,
  every variant's fields are optional properties, and CEL rules (`x-kubernetes-validations`) forbid a
  field the chosen variant does not have and apply the ranges in which variants differ.
- A union of scalar types (e.g. `bool | "auto"`) keeps any value (`x-kubernetes-preserve-unknown-fields`)
  plus a CEL rule on its type: the only place unknown content is preserved.
- Rules of a model (its `model_validator`s, mirrored in CEL by `operator/cel.py`) are attached to every
  node built from that model, keyed by the model's name.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import core_schema

# Keys copied from a pydantic scalar schema unchanged.
_SCALAR_KEYS = ("type", "enum", "pattern", "minLength", "maxLength", "format", "minimum", "maximum")
_CONSTRAINT_KEYS = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "nullable",
)
# Schema keys that only describe, never constrain (ignored when comparing union variants).
_DESCRIPTIVE_KEYS = ("description", "default")

Rules = Mapping[str, list[dict[str, str]]]


class SchemaError(ValueError):
    """A pydantic schema the converter cannot express structurally."""


class DefaultsFromFactories(GenerateJsonSchema):
    """Also reports `default_factory` values (pydantic leaves them out), so CRD defaults are complete."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            return factory()
        return super().get_default_value(schema)


def model_json_schema(model: type[BaseModel], by_alias: bool = True) -> dict[str, Any]:
    return model.model_json_schema(by_alias=by_alias, schema_generator=DefaultsFromFactories)


def strip_nulls(value: Any) -> Any:
    """Defaults without `None` members: an absent field is None in every model here."""
    if isinstance(value, dict):
        return {key: strip_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [strip_nulls(item) for item in value]
    return value


def cel_literal(value: Any, type_name: str) -> str:
    """A CEL literal of `value` for a field of OpenAPI type `type_name`."""
    if type_name == "number":
        return repr(float(value))
    if type_name == "integer":
        return str(int(value))
    if type_name == "boolean":
        return "true" if value else "false"
    return json.dumps(value)


def constraint_expr(field: str, schema: dict[str, Any]) -> tuple[str, str]:
    """CEL and English for the range/enum/length constraints of `self.<field>`."""
    type_name = schema.get("type", "")
    ref = f"self.{field}"
    parts: list[tuple[str, str]] = []
    if "minimum" in schema:
        op = ">" if schema.get("exclusiveMinimum") else ">="
        parts.append((f"{ref} {op} {cel_literal(schema['minimum'], type_name)}", f"{op} {schema['minimum']}"))
    if "maximum" in schema:
        op = "<" if schema.get("exclusiveMaximum") else "<="
        parts.append((f"{ref} {op} {cel_literal(schema['maximum'], type_name)}", f"{op} {schema['maximum']}"))
    if "enum" in schema:
        values = ", ".join(cel_literal(v, type_name) for v in schema["enum"])
        parts.append((f"{ref} in [{values}]", f"one of {schema['enum']}"))
    if "minLength" in schema:
        parts.append((f"size({ref}) >= {schema['minLength']}", f"at least {schema['minLength']} characters"))
    if "maxLength" in schema:
        parts.append((f"size({ref}) <= {schema['maxLength']}", f"at most {schema['maxLength']} characters"))
    if "pattern" in schema:
        parts.append((f"{ref}.matches({json.dumps(schema['pattern'])})", f"matching {schema['pattern']}"))
    if not parts:
        return "true", "anything"
    expr = " && ".join(p[0] for p in parts)
    if schema.get("nullable"):
        expr = f"type({ref}) == null_type || ({expr})"
    return expr, " and ".join(p[1] for p in parts)


class StructuralConverter:
    """Converts one pydantic JSON schema (with `$defs`) into a structural OpenAPI v3 schema."""

    def __init__(
        self,
        schema: dict[str, Any],
        rules: Rules | None = None,
        extra: Mapping[tuple[str, str], dict[str, Any]] | None = None,
    ) -> None:
        self.defs: dict[str, Any] = schema.get("$defs", {})
        self.rules = rules or {}
        # (model, field) -> keys added to that field's schema (e.g. maxItems the CEL cost estimator needs).
        self.extra = extra or {}
        self.root = schema

    def convert_root(self) -> dict[str, Any]:
        return self.convert(self.root, model=self.root.get("title"))

    def convert(self, node: dict[str, Any], model: str | None = None) -> dict[str, Any]:
        if "$ref" in node:
            name = node["$ref"].split("/")[-1]
            outer = {key: value for key, value in node.items() if key != "$ref"}
            return self.convert({**self.defs[name], **outer}, model=name)
        if "anyOf" in node:
            return self._any_of(node)
        if "oneOf" in node:
            return self._tagged_union(node)
        type_name = node.get("type")
        if "const" in node:
            type_name = type_name or "string"
        if type_name == "object":
            return self._object(node, model)
        if type_name == "array":
            return self._array(node)
        if type_name in ("string", "integer", "number", "boolean"):
            return self._scalar(node, type_name)
        raise SchemaError(f"cannot express {json.dumps(node)[:200]} in a structural schema")

    # ------------------------------------------------------------------ node kinds
    def _common(self, node: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
        if "description" in node:
            out["description"] = node["description"]
        default = node.get("default", NoDefault)
        if default is not NoDefault and default is not None:
            out["default"] = strip_nulls(copy.deepcopy(default))
        return out

    def _scalar(self, node: dict[str, Any], type_name: str) -> dict[str, Any]:
        out: dict[str, Any] = {"type": type_name}
        for key in _SCALAR_KEYS[1:]:
            if key in node:
                out[key] = node[key]
        if "const" in node:
            out["enum"] = [node["const"]]
        # JSON-schema 2020-12 numeric exclusive bounds -> OpenAPI v3 (draft 4) boolean form.
        for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if bound in node:
                out[plain] = node[bound]
                out[bound] = True
        return self._common(node, out)

    def _array(self, node: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "array", "items": self.convert(node.get("items", {}))}
        for key in ("minItems", "maxItems"):
            if key in node:
                out[key] = node[key]
        for key, value in node.items():
            if key.startswith("x-kubernetes-"):
                out[key] = value
        return self._common(node, out)

    def _object(self, node: dict[str, Any], model: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "object"}
        properties = node.get("properties")
        extra = node.get("additionalProperties")
        rules = [dict(rule) for rule in self.rules.get(model or "", [])]
        if properties:
            out["properties"] = {
                name: {**self.convert(prop), **self.extra.get((model or "", name), {})}
                for name, prop in properties.items()
            }
            if node.get("required"):
                out["required"] = list(node["required"])
        if isinstance(extra, dict):
            out["additionalProperties"] = self.convert(extra)
        elif extra is True or (not properties and extra is None):
            out["x-kubernetes-preserve-unknown-fields"] = True
        if rules:
            out["x-kubernetes-validations"] = rules
        return self._common(node, out)

    def _any_of(self, node: dict[str, Any]) -> dict[str, Any]:
        variants = [v for v in node["anyOf"] if v.get("type") != "null"]
        # A null for a non-nullable field is pruned (then defaulted) by the API server, i.e. read as absent,
        # which is what None means for a field whose default is None. Only a field whose default is not
        # None needs an explicit null kept (e.g. `dual_clip_c: null` disables a clip that defaults to 10).
        nullable = len(variants) < len(node["anyOf"]) and node.get("default") is not None
        outer = {key: value for key, value in node.items() if key != "anyOf"}
        if len(variants) == 1:
            out = self.convert({**variants[0], **outer})
            if nullable:
                out["nullable"] = True
            return out
        if all(self._is_scalar(v) for v in variants):
            return self._scalar_union(variants, nullable, outer)
        raise SchemaError(f"cannot express a union of {[v.get('type') for v in variants]} structurally")

    def _is_scalar(self, node: dict[str, Any]) -> bool:
        node = self.defs[node["$ref"].split("/")[-1]] if "$ref" in node else node
        return node.get("type") in ("string", "integer", "number", "boolean") or "const" in node

    def _scalar_union(self, variants: list[dict[str, Any]], nullable: bool, outer: dict[str, Any]) -> dict[str, Any]:
        """An untyped node (the API server has no structural form for e.g. `bool | "auto"`, and CEL cannot
        see untyped fields): any value is kept and the operator's pydantic validation reports a bad one."""
        words = []
        for variant in variants:
            values = [variant["const"]] if "const" in variant else variant.get("enum")
            words.append(" or ".join(json.dumps(v) for v in values) if values else f"a {variant.get('type')}")
        out: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}
        if nullable:
            out["nullable"] = True
        out = self._common(outer, out)
        note = f"(Must be {' or '.join(words)}; checked by the operator, not the API server.)"
        out["description"] = f"{out.get('description', '')} {note}".strip()
        return out

    # ------------------------------------------------------------------ discriminated unions
    def _tagged_union(self, node: dict[str, Any]) -> dict[str, Any]:
        discriminator = node.get("discriminator")
        if not discriminator:
            raise SchemaError("a oneOf without a discriminator cannot be made structural")
        tag = discriminator["propertyName"]
        variants: dict[str, tuple[str, dict[str, Any]]] = {}
        for ref in node["oneOf"]:
            name = ref["$ref"].split("/")[-1]
            definition = self.defs[name]
            tag_schema = definition["properties"][tag]
            value = tag_schema.get("const", (tag_schema.get("enum") or [None])[0])
            variants[value] = (name, definition)
        tags = list(variants)
        converted = {
            value: {field: self.convert(prop) for field, prop in definition["properties"].items() if field != tag}
            for value, (_, definition) in variants.items()
        }
        fields: list[str] = []
        for props in converted.values():
            fields.extend(field for field in props if field not in fields)
        properties: dict[str, Any] = {
            tag: {"type": "string", "enum": tags, "description": f"Selects the variant: one of {', '.join(tags)}."}
        }
        rules: list[dict[str, str]] = []
        for field in fields:
            owners = [value for value in tags if field in converted[value]]
            schemas = [converted[value][field] for value in owners]
            properties[field], field_rules = self._merge_field(field, owners, schemas, tag, len(owners) == len(tags))
            rules.extend(field_rules)
            if len(owners) < len(tags):
                allowed = ", ".join(owners)
                rules.append(
                    {
                        "rule": f"!has(self.{field}) || self.{tag} in [{', '.join(json.dumps(v) for v in owners)}]",
                        "messageExpression": (
                            f"'{field} is not allowed when {tag} is ' + self.{tag} + ' (only with {allowed})'"
                        ),
                        "fieldPath": f".{field}",
                        "reason": "FieldValueForbidden",
                    }
                )
        for value, (model, _) in variants.items():
            for rule in self.rules.get(model, []):
                guarded = dict(rule)
                guarded["rule"] = f"self.{tag} != {json.dumps(value)} || ({rule['rule']})"
                rules.append(guarded)
        out: dict[str, Any] = {"type": "object", "required": [tag], "properties": properties}
        if rules:
            out["x-kubernetes-validations"] = rules
        return self._common(node, out)

    def _merge_field(
        self, field: str, owners: list[str], schemas: list[dict[str, Any]], tag: str, in_all: bool
    ) -> tuple[dict[str, Any], list[dict[str, str]]]:
        """One property for a field several variants share: the shared constraints in the schema, the
        variant-specific ones as CEL rules guarded by the tag."""
        types = {schema.get("type") for schema in schemas}
        if len(types) > 1:
            raise SchemaError(f"union field {field!r} has different types {sorted(map(str, types))} across variants")
        merged = copy.deepcopy(schemas[0])
        by_description: dict[str, list[str]] = {}
        for owner, schema in zip(owners, schemas, strict=True):
            by_description.setdefault(schema.get("description", ""), []).append(owner)
        if len(by_description) > 1:
            merged["description"] = " ".join(f"[{', '.join(who)}] {text}" for text, who in by_description.items())
        defaults = [json.dumps(schema.get("default"), sort_keys=True) for schema in schemas]
        if not in_all or len(set(defaults)) > 1 or "default" not in schemas[0]:
            merged.pop("default", None)
        rules: list[dict[str, str]] = []
        if merged.get("type") not in ("integer", "number", "string"):
            stripped = [{k: v for k, v in s.items() if k not in _DESCRIPTIVE_KEYS} for s in schemas]
            if any(json.dumps(s, sort_keys=True) != json.dumps(stripped[0], sort_keys=True) for s in stripped):
                raise SchemaError(f"union field {field!r} differs structurally across variants")
            return merged, rules
        constraints = [{k: s[k] for k in _CONSTRAINT_KEYS if k in s} for s in schemas]
        # Only owners may set the field (other variants are refused by a rule), so what all owners
        # share can stay in the schema itself.
        shared = {key: value for key, value in constraints[0].items() if all(c.get(key) == value for c in constraints)}
        # A bound is shared only together with its exclusivity flag.
        for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
            if (bound in shared) != (flag in shared) and any(flag in c for c in constraints):
                shared.pop(bound, None)
                shared.pop(flag, None)
        for key in _CONSTRAINT_KEYS:
            merged.pop(key, None)
        merged.update(shared)
        if any(c.get("nullable") for c in constraints):
            merged["nullable"] = True
        for owner, schema, own in zip(owners, schemas, constraints, strict=True):
            specific = {k: v for k, v in own.items() if shared.get(k, object()) != v}
            not_null = merged.get("nullable") and not own.get("nullable")
            if not specific and not not_null:
                continue
            expr, words = constraint_expr(field, {"type": schema["type"], **own})
            if not_null:
                expr, words = f"type(self.{field}) != null_type && ({expr})", f"set (not null) and {words}"
            rules.append(
                {
                    "rule": f"!has(self.{field}) || self.{tag} != {json.dumps(owner)} || ({expr})",
                    "message": f"{field} must be {words} when {tag} is {owner}",
                    "fieldPath": f".{field}",
                }
            )
        return merged, rules
