"""The controls every tab shares: the method picker with its guide, the window form, one widget per
registry field, mode and seed; and the small helpers the tabs' handlers share.

A public endpoint's Python signature is what ``gradio_client`` shows: :func:`api_function` gives a handler
that takes its inputs positionally the names of the method parameters they set, so ``view_api()`` lists
``method``, ``kernel_size``, ``stride``, … instead of ``param_4``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import gradio as gr

import poolcore

from . import snippets
from .controls import (
    Field,
    collect_params,
    fields_of,
    format_value,
    union_fields,
    visible_names,
    window_forms,
)
from .guide import LATEX_DELIMITERS, guide_markdown
from .handlers import PageError

__all__ = [
    "WINDOW_FIELDS",
    "ControlPanel",
    "api_function",
    "base_url",
    "outcome_markdown",
    "parse_seed",
    "seed_text",
    "shape_text",
]

WINDOW_FIELDS = frozenset({"kernel_size", "stride", "padding", "ceil_mode", "output_size", "dilation"})

# Helpers the page calls (field visibility, snippets): hidden from gradio_client and the API page.
PRIVATE: dict[str, Any] = {"api_visibility": "private", "queue": False}


def base_url(origin: str | None) -> str:
    """Where the page was loaded from (the browser's ``location.origin``), so snippets paste as they are."""
    origin = (origin or "").strip().rstrip("/")
    return origin if origin.startswith(("http://", "https://")) else snippets.DEFAULT_BASE


def parse_seed(value: Any) -> int | None:
    """The seed box: blank means "draw one"; anything else must be an integer."""
    text = "" if value is None else str(value).strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise PageError(422, f"seed must be an integer (got {text!r})") from None


def seed_text(value: Any) -> int | str | None:
    """The seed as a snippet shows it, even when it is not a valid one."""
    try:
        return parse_seed(value)
    except PageError:
        return str(value).strip()


def shape_text(shape: Sequence[int]) -> str:
    return "×".join(str(s) for s in shape)


def outcome_markdown(input_shape: Sequence[int], outcome: Any) -> str:
    """Shapes, device, time, seed and the resolved parameters of one run."""
    resolved = {k: v for k, v in outcome.params.items() if v is not None}
    seed = outcome.params.get("seed")
    parts = [
        f"**input** {shape_text(input_shape)} → **output** {shape_text(outcome.output.shape)}",
        f"**device** {outcome.device}",
        f"**time** {outcome.elapsed_ms:.2f} ms",
    ]
    if seed is not None:
        parts.append(f"**seed** {seed}")
    params = ", ".join(f"{k}={format_value(v)}" for k, v in resolved.items() if k not in ("mode", "seed"))
    return " · ".join(parts) + f"\n\n`{outcome.method}` · mode {outcome.params['mode']} · {params}"


def api_function(fn: Callable[..., Any], names: Sequence[str], doc: str) -> Callable[..., Any]:
    """``fn`` under a signature whose positional parameters are ``names``: the first (the input) required,
    the rest defaulting to None (gradio_client then takes each component's starting value)."""

    def wrapper(*args: Any) -> Any:
        return fn(*args)

    params = [inspect.Parameter(names[0], inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for n in names[1:]]
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__doc__ = doc
    wrapper.__name__ = fn.__name__
    return wrapper


@dataclass
class ControlPanel:
    """The method dropdown and its guide, window form, one widget per registry field, mode and seed."""

    prefix: str
    window_defaults: Mapping[str, str]
    method: gr.Dropdown = field(init=False)
    guide: gr.Markdown = field(init=False)
    form: gr.Radio = field(init=False)
    widgets: dict[str, gr.components.Component] = field(init=False)
    fields: list[Field] = field(init=False)
    mode: gr.Radio = field(init=False)
    seed: gr.Textbox = field(init=False)
    method_changed: Any = field(init=False)  # the method-change event, for a tab to chain a run on

    def render(self, default_method: str) -> None:
        """The picker and its parameters; the guide goes where :meth:`render_guide` is called."""
        names = poolcore.methods()
        self.method = gr.Dropdown(
            names, value=default_method, label="Method", elem_id=f"{self.prefix}-method"
        )
        forms = window_forms(default_method)
        self.form = gr.Radio(
            ["kernel", "adaptive"],
            value=forms[0] if forms else "kernel",
            label="Window",
            info="kernel: sliding windows (kernel_size, stride, padding); adaptive: give the output size",
            visible=len(forms) == 2,
            elem_id=f"{self.prefix}-form",
        )
        self.fields = union_fields(names)
        shown = visible_names(default_method, self.form.value)
        own = {f.key: f for f in fields_of(default_method)}
        made: dict[str, gr.components.Component] = {}
        # Text and sliders first, checkboxes in a row of their own so their labels are not squeezed.
        for kinds in (("size", "text", "int", "float", "choice"), ("bool",)):
            with gr.Row():
                for fld in self.fields:
                    if fld.kind in kinds:
                        current = own.get(fld.key, fld)
                        made[fld.key] = self._widget(current, visible=fld.key in own and fld.name in shown)
        self.widgets = {fld.key: made[fld.key] for fld in self.fields}
        spec = poolcore.get_spec(default_method)
        with gr.Row():
            self.mode = gr.Radio(
                ["eval", "train"],
                value="eval",
                label="Mode",
                info="train samples (stochastic, mixed); eval is deterministic",
                visible=spec.takes_training,
                elem_id=f"{self.prefix}-mode",
            )
            self.seed = gr.Textbox(
                value="",
                label="Seed",
                placeholder="random",
                max_lines=1,
                info="blank: the server draws one and shows it here",
                visible=spec.random,
                elem_id=f"{self.prefix}-seed",
            )

    def render_guide(self, default_method: str) -> None:
        with gr.Accordion("Method guide", open=True, elem_id=f"{self.prefix}-guide-box"):
            self.guide = gr.Markdown(
                guide_markdown(default_method),
                latex_delimiters=LATEX_DELIMITERS,
                elem_id=f"{self.prefix}-guide",
            )

    def _start_value(self, fld: Field) -> Any:
        if fld.name in self.window_defaults and (fld.default is None or fld.required):
            return self.window_defaults[fld.name]
        if fld.required or fld.default is None:
            return None if fld.bounded else ""
        if fld.kind in ("bool",) or fld.bounded:
            return fld.default
        if fld.name in WINDOW_FIELDS or fld.kind == "choice":
            return format_value(fld.default)
        # Blank means "this method's default" (shown as the placeholder): two methods may share a field
        # with different defaults (lp's p is 2, gem's 3), and a client that leaves it out gets the right one.
        return ""

    @staticmethod
    def _placeholder(fld: Field) -> str | None:
        if fld.required or fld.default is None or fld.kind in ("bool", "choice") or fld.bounded:
            return None
        return f"default {format_value(fld.default)}"

    def _widget(self, fld: Field, *, visible: bool) -> gr.components.Component:
        common: dict[str, Any] = {
            "label": fld.name,
            "info": fld.info(),
            "visible": visible,
            "elem_id": f"{self.prefix}-param-{fld.name}",
            "min_width": 200,
        }
        value = self._start_value(fld)
        if fld.kind == "bool":
            return gr.Checkbox(value=bool(value), **common)
        if fld.kind == "choice":
            choices = [format_value(c) for c in fld.choices]
            if fld.nullable or fld.default is None:
                choices = ["default", *choices]
            return gr.Dropdown(choices, value=value or "default", **common)
        if fld.kind in ("int", "float") and fld.bounded:
            step = 1 if fld.kind == "int" else 0.01
            low, high = cast(float, fld.minimum), cast(float, fld.maximum)  # bounded: both known
            return gr.Slider(low, high, value=value, step=step, **common)
        # Text, not gr.Number: blank must mean "the default", and a float may be inf (lp's p).
        return gr.Textbox(value=value, max_lines=1, placeholder=self._placeholder(fld), **common)

    # ---- events ---------------------------------------------------------------------------------
    def inputs(self) -> list[gr.components.Component]:
        return [self.method, self.form, *self.widgets.values()]

    def input_names(self) -> list[str]:
        """The API names of :meth:`inputs`: ``method``, ``window`` and each field's own name."""
        names = ["method", "window"]
        for fld in self.fields:  # two methods may give one name two kinds: the second is told apart
            names.append(fld.name if fld.name not in names else f"{fld.name}_{fld.kind}")
        return names

    def read(self, args: Sequence[Any]) -> tuple[str, dict[str, Any]]:
        """``(method, params)`` from the values of :meth:`inputs`, in order (None: the widget's start)."""
        method, form, *values = args
        method = method or self.method.value
        form = form or self.form.value
        widgets = dict(zip(self.widgets, values, strict=True))
        for fld in self.fields:  # a client that left a parameter out sends None: the page's start value
            if widgets[fld.key] is None:
                widgets[fld.key] = getattr(self.widgets[fld.key], "value", None)
        params = collect_params(method, form, widgets)
        return method, params

    def on_method(self, method: str, form: str, *values: Any) -> list[Any]:
        """Show the new method's fields (keeping window values), its guide, form, mode and seed."""
        spec = poolcore.get_spec(method)
        forms = window_forms(method)
        form = form if form in forms else (forms[0] if forms else "kernel")
        shown = visible_names(method, form)
        own = {f.key: f for f in fields_of(method)}
        updates: list[Any] = [
            gr.update(value=guide_markdown(method)),
            gr.update(value=form, visible=len(forms) == 2),
        ]
        for (key, _widget), current in zip(self.widgets.items(), values, strict=True):
            fld = own.get(key)
            if fld is None:
                updates.append(gr.update(visible=False))
                continue
            update: dict[str, Any] = {"visible": fld.name in shown, "info": fld.info()}
            # Window values carry over between methods; a blank one is filled only when there is something
            # to fill it with, so a reply to a method change never wipes what the user typed meanwhile.
            start = self._start_value(fld)
            if fld.name not in WINDOW_FIELDS or (current in (None, "") and start not in (None, "")):
                update["value"] = start
            if fld.kind in ("int", "float") and fld.bounded:
                update.update(minimum=fld.minimum, maximum=fld.maximum)
            elif fld.kind not in ("bool", "choice"):
                update["placeholder"] = self._placeholder(fld)
            updates.append(gr.update(**update))
        # A method that trains keeps the mode chosen (eval at first); one that doesn't runs in eval.
        updates.append(
            gr.update(visible=True) if spec.takes_training else gr.update(visible=False, value="eval")
        )
        updates.append(gr.update(visible=spec.random))
        return updates

    def method_outputs(self) -> list[gr.components.Component]:
        return [self.guide, self.form, *self.widgets.values(), self.mode, self.seed]

    def on_form(self, method: str, form: str) -> list[Any]:
        shown = visible_names(method, form)
        own = {f.key for f in fields_of(method)}
        return [
            gr.update(visible=key in own and fld.name in shown)
            for key, fld in zip(self.widgets, self.fields, strict=True)
        ]

    def wire(self, again: gr.Button) -> None:
        """Method and window-form changes update the fields; ``again`` ("Sample again") shows only in
        train mode for a random method."""
        self.method_changed = self.method.change(
            self.on_method, self.inputs(), self.method_outputs(), **PRIVATE
        )
        self.form.change(self.on_form, [self.method, self.form], list(self.widgets.values()), **PRIVATE)
        gr.on(
            [self.method.change, self.mode.change], _again_visible, [self.method, self.mode], again, **PRIVATE
        )

    def changes(self) -> list[Any]:
        return [c.change for c in [*self.inputs(), self.mode, self.seed]]  # type: ignore[attr-defined]


def _again_visible(method: str, mode: str) -> Any:
    return gr.update(visible=mode == "train" and poolcore.get_spec(method).random)
