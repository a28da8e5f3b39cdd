"""API types are plain dataclasses; this module turns them into OpenAPI v3 schemas (for the CRDs) and turns
API objects (dicts) into typed instances (for the controllers).

It plays the role controller-gen plays for Go providers: the Python types are the one source of truth and
`config/crd/bases/*.yaml` is generated from them (`make generate`; a test fails when the files drift).

Conventions: attribute names are the JSON field names (camelCase); a field without a default is required;
`Optional[X]` / `X | None` fields are optional; field-level validation and descriptions go in
`api_field(...)`;
class-level CEL rules in `@api_type(cel=[...])`; the class docstring is the object's description.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

T = TypeVar("T")


class Quantity(str):
    """A Kubernetes resource quantity ("64Gi", "500m", "2"): int-or-string in the schema."""


class Timestamp(str):
    """An RFC 3339 date-time string."""


class FreeForm(dict):  # type: ignore[type-arg]
    """An object whose fields the API server must keep as they are (x-kubernetes-preserve-unknown-fields)."""


@dataclass(frozen=True)
class Cel:
    rule: str
    message: str
    field_path: str | None = None  # where the error is reported, e.g. ".address"
    reason: str | None = None


_META = "capi_provider.api"
# corev1.ResourceQuantity's pattern, as upstream CRDs carry it.
_QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


def api_field(
    description: str,
    *,
    default: Any = MISSING,
    default_factory: Any = MISSING,
    schema_default: bool = True,
    pattern: str | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
    minimum: int | None = None,
    maximum: int | None = None,
    min_items: int | None = None,
    max_items: int | None = None,
    fmt: str | None = None,
    cel: tuple[Cel, ...] = (),
    list_type: str | None = None,
    list_map_keys: tuple[str, ...] = (),
    nullable: bool = False,
) -> Any:
    """A dataclass field plus its OpenAPI facts.

    `schema_default=False` keeps a Python default out of the CRD."""
    meta = {
        "description": description,
        "pattern": pattern,
        "minLength": min_length,
        "maxLength": max_length,
        "minimum": minimum,
        "maximum": maximum,
        "minItems": min_items,
        "maxItems": max_items,
        "format": fmt,
        "cel": cel,
        "x-kubernetes-list-type": list_type,
        "x-kubernetes-list-map-keys": list(list_map_keys) or None,
        "nullable": nullable or None,
        "schema_default": schema_default,
    }
    kwargs: dict[str, Any] = {"metadata": {_META: meta}}
    if default is not MISSING:
        kwargs["default"] = default
    if default_factory is not MISSING:
        kwargs["default_factory"] = default_factory
    return field(**kwargs)


def api_type(*, cel: tuple[Cel, ...] = ()) -> Any:
    """Class decorator attaching object-level CEL rules (rules over several fields)."""

    def wrap(cls: type[T]) -> type[T]:
        cls.__api_cel__ = cel  # type: ignore[attr-defined]
        return cls

    return wrap


# ------------------------------------------------------------------------------------------ schema


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _cel_schema(rules: tuple[Cel, ...]) -> list[dict[str, str]]:
    out = []
    for r in rules:
        item = {"rule": r.rule, "message": r.message}
        if r.field_path:
            item["fieldPath"] = r.field_path
        if r.reason:
            item["reason"] = r.reason
        out.append(item)
    return out


def schema_for_type(tp: Any) -> dict[str, Any]:
    tp, _ = _unwrap_optional(tp)
    origin = get_origin(tp)
    if tp is str:
        return {"type": "string"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer", "format": "int64"}
    if tp is Quantity:
        # Same shape as corev1.ResourceQuantity in upstream CRDs.
        return {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": _QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
            # Bounds CEL's cost estimate for rules over quantities inside lists.
            "maxLength": 64,
        }
    if tp is Timestamp:
        return {"type": "string", "format": "date-time"}
    if tp is FreeForm:
        return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    if origin is Literal:
        values = list(get_args(tp))
        return {"type": "string", "enum": values}
    if origin is list:
        (item,) = get_args(tp)
        return {"type": "array", "items": schema_for_type(item)}
    if origin is dict:
        _, value = get_args(tp)
        return {"type": "object", "additionalProperties": schema_for_type(value)}
    if dataclasses.is_dataclass(tp):
        return schema_for_dataclass(tp)
    raise TypeError(f"no OpenAPI mapping for {tp!r}")


def schema_for_dataclass(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls)
    props: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata.get(_META, {}))
        if not meta:
            raise TypeError(f"{cls.__name__}.{f.name} needs api_field(...) with a description")
        s = schema_for_type(hints[f.name])
        s["description"] = meta.pop("description")
        rules = meta.pop("cel")
        if rules:
            s["x-kubernetes-validations"] = _cel_schema(rules)
        schema_default = meta.pop("schema_default")
        for key, value in meta.items():
            if value is not None:
                s[key] = value
        if f.default is MISSING and f.default_factory is MISSING:
            required.append(f.name)
        elif schema_default and f.default is not MISSING and f.default is not None:
            s["default"] = f.default
        props[f.name] = s
    out: dict[str, Any] = {"type": "object", "properties": props}
    doc = inspect.getdoc(cls)
    if doc and not doc.startswith(cls.__name__ + "("):
        out["description"] = doc
    if required:
        out["required"] = required
    rules = getattr(cls, "__api_cel__", ())
    if rules:
        out["x-kubernetes-validations"] = _cel_schema(rules)
    return out


# ------------------------------------------------------------------------------------------ parsing


def from_obj(cls: type[T], data: Mapping[str, Any] | None) -> T:
    """Build a typed view of an API object (or part of one). Unknown keys are ignored; missing required
    fields become None rather than raising, because the API server already validated what it stored and a
    controller must keep working on objects written by an older schema."""
    data = data or {}
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in data and data[f.name] is not None:
            kwargs[f.name] = _convert(hints[f.name], data[f.name])
        elif f.default is MISSING and f.default_factory is MISSING:
            kwargs[f.name] = None
    return cls(**kwargs)


def _convert(tp: Any, value: Any) -> Any:
    tp, _ = _unwrap_optional(tp)
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_obj(tp, value)  # type: ignore[arg-type]
    if origin is list:
        (item,) = get_args(tp)
        return [_convert(item, v) for v in value]
    if origin is dict:
        _, vt = get_args(tp)
        return {k: _convert(vt, v) for k, v in value.items()}
    if tp is Quantity:
        return Quantity(str(value))
    if tp is Timestamp:
        return Timestamp(value)
    if tp is FreeForm:
        return FreeForm(value)
    return value


def to_obj(instance: Any) -> Any:
    """The JSON form of a typed value, leaving out None fields (so patches never null out fields by
    accident)."""
    if dataclasses.is_dataclass(instance) and not isinstance(instance, type):
        out = {}
        for f in dataclasses.fields(instance):
            v = getattr(instance, f.name)
            if v is not None:
                out[f.name] = to_obj(v)
        return out
    if isinstance(instance, list):
        return [to_obj(v) for v in instance]
    if isinstance(instance, dict):
        return {k: to_obj(v) for k, v in instance.items()}
    if isinstance(instance, str):
        return str(instance)
    return instance
