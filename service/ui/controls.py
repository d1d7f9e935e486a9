"""Page controls derived from the registry's pydantic parameter models.

Each parameter of each registered method becomes a :class:`Field` (kind, default, range, description) read
from the model's JSON schema, so a new method gets its controls without UI code. The page builds one
widget per distinct ``(name, kind)`` over all methods and shows the ones the chosen method has.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic_core import PydanticUndefined

import poolcore

from ..params import parse_text as route_parse_text

__all__ = [
    "ADAPTIVE_ONLY",
    "HIDDEN",
    "KERNEL_ONLY",
    "Field",
    "Kind",
    "WindowForm",
    "collect_params",
    "fields_of",
    "format_value",
    "parse_text",
    "union_fields",
    "visible_names",
    "window_forms",
]

Kind = Literal["bool", "choice", "int", "float", "size", "text"]
WindowForm = Literal["kernel", "adaptive"]

# WindowParams takes exactly one window form: these fields belong to the sliding-window form only ...
KERNEL_ONLY = frozenset({"kernel_size", "stride", "padding", "ceil_mode", "dilation"})
# ... and this one to the adaptive form.
ADAPTIVE_ONLY = frozenset({"output_size"})
# The window's own size: no default, the form needs it (blank is a 422, so the help must not say "default").
WINDOW_SIZES = frozenset({"kernel_size", "output_size"})
# Upper bounds at or past this are overflow guards, not limits a person chooses: not shown.
MAX_SHOWN = 2**31 - 1
# The page always sends 2-D inputs (C×H×W images, 1×H×W matrices), so the spatial rank is never a choice.
HIDDEN = frozenset({"dims"})


@dataclass(frozen=True)
class Field:
    """One parameter of one method, as the page needs it."""

    name: str
    kind: Kind
    default: Any  # PydanticUndefined when required
    description: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    choices: tuple[Any, ...] = ()
    nullable: bool = False

    @property
    def key(self) -> str:
        return f"{self.name}:{self.kind}"

    @property
    def required(self) -> bool:
        return self.default is PydanticUndefined

    @property
    def bounded(self) -> bool:
        """Both ends known and inclusive: a slider fits."""
        return self.minimum is not None and self.maximum is not None and math.isfinite(self.maximum)

    def range_text(self) -> str:
        parts = []
        if self.minimum is not None:
            parts.append(f"≥ {_num(self.minimum)}")
        if self.exclusive_minimum is not None:
            parts.append(f"> {_num(self.exclusive_minimum)}")
        if self.maximum is not None and self.maximum < MAX_SHOWN:  # not the 2^31-1 guard on every int
            parts.append(f"≤ {_num(self.maximum)}")
        if self.exclusive_maximum is not None:
            parts.append(f"< {_num(self.exclusive_maximum)}")
        return ", ".join(parts)

    def info(self) -> str:
        """The help line under the widget: description, range, default and the text syntax."""
        bits = [self.description.rstrip(".")] if self.description else []
        rng = self.range_text()
        if rng:
            bits.append(rng)
        if self.kind == "size":
            bits.append("e.g. 2 or 2,3")
        if self.required:
            bits.append("required")
        elif self.default is not None and self.kind not in ("bool",):
            bits.append(f"default {format_value(self.default)}")
        elif self.name in WINDOW_SIZES:
            bits.append("required for this window form")
        elif self.default is None and self.kind in ("int", "float", "size", "text"):
            bits.append("blank for the default")
        return "; ".join(bits)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _branches(schema: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    if "anyOf" in schema:
        return [b for branch in schema["anyOf"] for b in _branches(branch)]
    if "oneOf" in schema:
        return [b for branch in schema["oneOf"] for b in _branches(branch)]
    return [schema]


def _field(name: str, schema: Mapping[str, Any], default: Any, description: str) -> Field:
    branches = _branches(schema)
    nullable = any(b.get("type") == "null" for b in branches)
    real = [b for b in branches if b.get("type") != "null"]
    types = {b.get("type") for b in real}
    kind: Kind
    choices: tuple[Any, ...] = ()
    if len(real) == 1 and ("enum" in real[0] or "const" in real[0]):
        kind = "choice"
        choices = tuple(real[0].get("enum", [real[0].get("const")]))
    elif types == {"boolean"}:
        kind = "bool"
    elif types == {"integer"}:
        kind = "int"
    elif types <= {"number", "integer"} and types:
        kind = "float"
    elif types == {"integer", "array"}:
        kind = "size"
    else:
        kind = "text"
    scalar = next((b for b in real if b.get("type") in ("integer", "number")), {})
    return Field(
        name=name,
        kind=kind,
        default=default,
        description=description,
        minimum=scalar.get("minimum"),
        maximum=scalar.get("maximum"),
        exclusive_minimum=scalar.get("exclusiveMinimum"),
        exclusive_maximum=scalar.get("exclusiveMaximum"),
        choices=choices,
        nullable=nullable,
    )


def fields_of(method: str) -> list[Field]:
    """The method's parameters in declaration order, without the ones the page never shows."""
    model = poolcore.get_spec(method).params
    properties = model.model_json_schema().get("properties", {})
    out = []
    for name, info in model.model_fields.items():
        if name in HIDDEN or name not in properties:
            continue
        out.append(_field(name, properties[name], info.default, info.description or ""))
    return out


def union_fields(methods: Sequence[str]) -> list[Field]:
    """One representative field per distinct ``(name, kind)`` over ``methods``, in first-seen order."""
    seen: dict[str, Field] = {}
    for method in methods:
        for field in fields_of(method):
            seen.setdefault(field.key, field)
    return list(seen.values())


def window_forms(method: str) -> tuple[WindowForm, ...]:
    """The window forms a method offers: both for WindowParams, one for the adaptive presets, none for
    global ones."""
    names = {f.name for f in fields_of(method)}
    forms: list[WindowForm] = []
    if "kernel_size" in names:
        forms.append("kernel")
    if "output_size" in names:
        forms.append("adaptive")
    return tuple(forms)


def visible_names(method: str, form: str | None) -> set[str]:
    """Names of the method's fields that take part in the chosen window form."""
    forms = window_forms(method)
    names = {f.name for f in fields_of(method)}
    if len(forms) == 2:
        names -= ADAPTIVE_ONLY if form != "adaptive" else KERNEL_ONLY
    return names


def parse_text(text: str) -> Any:
    """The route's query-string syntax (:func:`service.params.parse_text`: ``2`` → 2, ``2,3`` → (2, 3),
    ``null,7`` → (None, 7), ``true``/``false``; anything unreadable stays a string so validation names
    it), with tuples for sequences; the page also takes a JSON list or object."""
    text = text.strip()
    if text.startswith(("[", "{")):
        try:
            value = json.loads(text)
        except ValueError:
            return text
    else:
        value = route_parse_text(text)
    return tuple(value) if isinstance(value, list) else value


def format_value(value: Any) -> str:
    """The inverse of :func:`parse_text`: the query-string spelling of a parameter value."""
    if isinstance(value, (tuple, list)):
        return ",".join(format_value(v) for v in value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _convert(field: Field, raw: Any) -> Any:
    """A widget's value as the parameter value, or PydanticUndefined when left blank."""
    if field.kind == "bool":
        return bool(raw)
    if field.kind == "choice":
        by_label = {format_value(c): c for c in field.choices}
        if raw in (None, "", "default"):
            return PydanticUndefined
        return by_label.get(str(raw), raw)
    if field.kind in ("int", "float"):
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return PydanticUndefined
        if isinstance(raw, str):
            return parse_text(raw)
        if isinstance(raw, float) and field.kind == "int" and raw.is_integer():
            return int(raw)
        return raw
    if raw is None or not str(raw).strip():
        return PydanticUndefined
    return parse_text(str(raw))


def collect_params(method: str, form: str | None, values: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters to send for ``method``: each shown field's widget value (``values`` is keyed by
    :attr:`Field.key`), leaving out blanks and values equal to the default so requests stay short."""
    shown = visible_names(method, form)
    params: dict[str, Any] = {}
    for field in fields_of(method):
        if field.name not in shown or field.key not in values:
            continue
        value = _convert(field, values[field.key])
        if value is PydanticUndefined or (not field.required and value == field.default):
            continue
        params[field.name] = value
    return params
