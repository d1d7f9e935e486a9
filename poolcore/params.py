"""Pydantic models of each method's parameters.

The registry hands these to the service (validation, OpenAPI), the UI (controls) and the inference
protocol, so the window arguments are declared once here and each family adds its own fields.
"""

from __future__ import annotations

import difflib
import functools
import typing
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = ["MAX_INT", "AdaptiveParams", "GlobalParams", "WindowParams", "format_validation_error"]

# The largest window argument (kernel_size, stride, padding, output_size entry): torch's pooling kernels
# take these as C ints, and a stride of 2**32 ends the process with SIGFPE in max_pool.
MAX_INT = 2**31 - 1
_NAMED = 3  # unknown parameters an error names; the rest are counted
PositiveInt = Annotated[int, Field(ge=1, le=MAX_INT)]
NonNegativeInt = Annotated[int, Field(ge=0, le=MAX_INT)]
# One entry per spatial dimension: at most 3 (a longer tuple would only be echoed back in an error).
Size = PositiveInt | Annotated[tuple[PositiveInt, ...], Field(min_length=1, max_length=3)]
OptionalSize = PositiveInt | Annotated[tuple[PositiveInt | None, ...], Field(min_length=1, max_length=3)]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dims: Literal[1, 2, 3] | None = Field(
        None, description="Spatial rank; inferred from a tuple window argument, else from the input rank."
    )

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        """A JSON ``true`` where a number is expected is an error: pydantic would read it as 1."""
        if isinstance(data, dict):
            for name in _numeric_fields(cls):
                value = data.get(name)
                items = value if isinstance(value, (list, tuple)) else (value,)
                if any(isinstance(item, bool) for item in items):
                    raise ValueError(f"{name} must be a number, not a boolean (got {_shorten(value)})")
        return data


class WindowParams(_Params):
    """A sliding window (``kernel_size``...) or adaptive bins (``output_size``): exactly one of them."""

    kernel_size: Size | None = Field(None, description="Window size, an int or one int per spatial dim.")
    stride: Size | None = Field(None, description="Window step; defaults to kernel_size.")
    padding: NonNegativeInt | Annotated[tuple[NonNegativeInt, ...], Field(min_length=1, max_length=3)] = (
        Field(0, description="Implicit zero padding on both sides, at most half the kernel.")
    )
    ceil_mode: bool = Field(False, description="Use ceil instead of floor for the output size.")
    dilation: Size = Field(1, description="Spacing between a window's positions, as in torch's max_pool.")
    output_size: OptionalSize | None = Field(
        None, description="Adaptive output size; a null entry keeps that input size."
    )

    @model_validator(mode="after")
    def _one_window_form(self) -> WindowParams:
        if (self.kernel_size is None) == (self.output_size is None):
            raise ValueError(
                "give exactly one of kernel_size (sliding windows) or output_size (adaptive bins) "
                f"(got kernel_size={self.kernel_size!r}, output_size={self.output_size!r})"
            )
        dilation = self.dilation if isinstance(self.dilation, tuple) else (self.dilation,)
        dilated = any(d != 1 for d in dilation)
        if self.output_size is not None and (
            self.stride is not None or self.padding != 0 or self.ceil_mode or dilated
        ):
            raise ValueError(
                "stride, padding, dilation and ceil_mode apply to kernel_size windows, not to output_size"
            )
        return self


class AdaptiveParams(_Params):
    """Adaptive presets: ``output_size`` is required."""

    output_size: OptionalSize = Field(description="Adaptive output size; a null entry keeps that input size.")


class GlobalParams(_Params):
    """Global presets: the whole spatial extent is one window."""


def _leaf_types(annotation: Any) -> set[Any]:
    """The plain types an annotation accepts: ``int | tuple[int | None, ...]`` gives int and NoneType."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        return {type(arg) for arg in args}
    if not args:
        return {annotation} if isinstance(annotation, type) else set()
    return set().union(*(_leaf_types(arg) for arg in args if arg is not Ellipsis))


@functools.cache
def _numeric_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields of ``model`` that take numbers but no boolean."""
    numeric = []
    for name, info in model.model_fields.items():
        leaves = _leaf_types(info.annotation)
        if bool not in leaves and leaves & {int, float}:
            numeric.append(name)
    return tuple(numeric)


def _shorten(value: Any) -> str:
    """A client's value for a message: its first 64 characters, so a message never echoes a large one."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 64 else text[:64] + "…"


# Window parameters: a global method takes none of them, so naming one says the method is global.
_WINDOW_NAMES = frozenset({"kernel_size", "stride", "padding", "ceil_mode", "output_size", "dilation"})


def _unknown_hint(field: str, known: Sequence[str]) -> str:
    """Why an unknown parameter is unknown, when that can be said: the known name it looks like, or that
    the method pools the whole input."""
    if field in _WINDOW_NAMES and not _WINDOW_NAMES & set(known):
        return " (this method pools the whole input: it takes no window)"
    close = difflib.get_close_matches(field, known, n=1, cutoff=0.6)
    if not close:
        close = [name for name in known if name.startswith(field)][:1] if len(field) >= 3 else []
    return f" (did you mean {close[0]}?)" if close else ""


def _plain(item: dict[str, Any]) -> str:
    """pydantic's message in plain words where its own says more about pydantic than the parameter."""
    if item["type"] == "too_long" and isinstance(item.get("input"), (tuple, list)):
        most = item.get("ctx", {}).get("max_length")
        return f"takes at most {most} values, one per spatial dim, not {len(item['input'])}"
    if item["type"] == "too_short" and isinstance(item.get("input"), (tuple, list)):
        least = item.get("ctx", {}).get("min_length")
        return f"takes at least {least} value, one per spatial dim, not {len(item['input'])}"
    return str(item["msg"]).removeprefix("Value error, ")


def format_validation_error(method: str, error: ValidationError, known: Sequence[str] = ()) -> str:
    """One clause per offending parameter, naming it and the value given, for a ValueError or a 422.

    A union field (``int | tuple``) reports one error per branch; the branch whose type matched the
    input says what is actually wrong, so type mismatches are shown only when nothing else is.
    """
    by_field: dict[str, list[dict[str, Any]]] = {}
    for detail in error.errors():
        field = str(detail["loc"][0]) if detail["loc"] else ""
        by_field.setdefault(field, []).append(dict(detail))
    # Unknown names are counted past the first few: a request of thousands must not draw an error that
    # lists them all.
    unknown = [field for field, items in by_field.items() if items[0]["type"] == "extra_forbidden"]
    parts = []
    for field, items in by_field.items():
        specific = [i for i in items if not i["type"].endswith(("_type", "_parsing"))]
        item = (specific or items)[0]
        if item["type"] == "extra_forbidden":
            if len(unknown) <= _NAMED:
                parts.append(f"{_shorten(field)}: unknown parameter{_unknown_hint(field, known)}")
            elif field == unknown[0]:
                named = ", ".join(_shorten(name) for name in unknown[:_NAMED])
                parts.append(f"{len(unknown)} unknown parameters ({named}, …)")
            continue
        msg = _plain(item)
        parts.append(f"{_shorten(field)}: {msg} (got {_shorten(item['input'])})" if field else msg)
    return f"invalid parameters for {method!r}: " + "; ".join(parts)
