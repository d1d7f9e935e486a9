"""The Gradio Blocks page: image, compare and tensor tabs, each with the equivalent HTTP call.

Every control comes from the registry (:mod:`.controls`), every button calls :mod:`.handlers`, which call
``run_pool`` in process: the page never makes HTTP calls to its own server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import gradio as gr
import pandas as pd
from PIL import Image

import poolcore

from . import snippets
from .controls import (
    Field,
    collect_params,
    fields_of,
    format_value,
    parse_text,
    union_fields,
    visible_names,
    window_forms,
)
from .handlers import (
    PageError,
    Runtime,
    compare_params,
    guard,
    matrix_values,
    parse_matrix,
    plane_params,
    pool_image,
    pool_tensor,
)
from .imaging import example_paths
from .sampling import is_stochastic, sample_counts, window_probabilities

__all__ = ["CSS", "SEED_MATRIX", "THEME", "build_blocks"]

# The seed's worked example (section 3): one 3×3 window summing to 10; the eval value is 16.52 / 10 = 1.652.
SEED_MATRIX = [[0.0, 1.1, 2.5], [0.9, 2.0, 1.0], [0.0, 1.5, 1.0]]

# Gradio's bundled font plus system fallbacks: nothing is fetched from a font CDN.
THEME = gr.themes.Default(
    font=[gr.themes.LocalFont("Source Sans Pro"), "ui-sans-serif", "system-ui", "sans-serif"],
    font_mono=[gr.themes.LocalFont("IBM Plex Mono"), "ui-monospace", "Consolas", "monospace"],
)

# Input and output fill the same box; the browser upscales small outputs with nearest neighbour, so each
# pooling window shows as one block while the image keeps its true pixel size.
CSS = """
.pool-view img { width: 100% !important; height: 300px !important; max-height: 300px !important;
                 object-fit: contain; image-rendering: pixelated; }
#compare-gallery img { image-rendering: pixelated; }
.prob-table { border-collapse: collapse; margin: 0 1em 0.6em 0; display: inline-table; }
.prob-table td { border: 1px solid #9994; padding: 2px 6px; text-align: right; font-family: monospace; }
.prob-table caption { font-size: 0.85em; text-align: left; }
"""

# Starting values for window fields that have no default of their own (adaptive presets require one).
IMAGE_WINDOW = {"kernel_size": "4", "output_size": "16"}
TENSOR_WINDOW = {"kernel_size": "3", "output_size": "1"}
WINDOW_FIELDS = frozenset({"kernel_size", "stride", "padding", "ceil_mode", "output_size"})
MAX_PROBABILITY_TABLES = 16
MAX_PLOTTED_WINDOWS = 4
# The draws run as one batch of copies of the matrix (in float64, with autograd): keep that batch small.
MAX_DRAW_ELEMENTS = 4_000_000


def _base(origin: str | None) -> str:
    """Where the page was loaded from (the browser's ``location.origin``), so snippets paste as they are."""
    origin = (origin or "").strip().rstrip("/")
    return origin if origin.startswith(("http://", "https://")) else snippets.DEFAULT_BASE


def _seed(value: Any) -> int | None:
    """The seed box: blank means "draw one"; anything else must be an integer."""
    text = "" if value is None else str(value).strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise PageError(422, f"seed must be an integer (got {text!r})") from None


def _seed_text(value: Any) -> int | str | None:
    """The seed as a snippet shows it, even when it is not a valid one."""
    try:
        return _seed(value)
    except PageError:
        return str(value).strip()


def _shape(shape: Sequence[int]) -> str:
    return "×".join(str(s) for s in shape)


def _info(input_shape: Sequence[int], outcome: Any) -> str:
    resolved = {k: v for k, v in outcome.params.items() if v is not None}
    seed = outcome.params.get("seed")
    parts = [
        f"**input** {_shape(input_shape)} → **output** {_shape(outcome.output.shape)}",
        f"**device** {outcome.device}",
        f"**time** {outcome.elapsed_ms:.2f} ms",
    ]
    if seed is not None:
        parts.append(f"**seed** {seed}")
    params = ", ".join(f"{k}={format_value(v)}" for k, v in resolved.items() if k not in ("mode", "seed"))
    return " · ".join(parts) + f"\n\n`{outcome.method}` · mode {outcome.params['mode']} · {params}"


@dataclass
class ControlPanel:
    """The method dropdown, window form, one widget per registry field, mode and seed of one tab."""

    prefix: str
    window_defaults: Mapping[str, str]
    method: gr.Dropdown = field(init=False)
    description: gr.Markdown = field(init=False)
    form: gr.Radio = field(init=False)
    widgets: dict[str, gr.components.Component] = field(init=False)
    fields: list[Field] = field(init=False)
    mode: gr.Radio = field(init=False)
    seed: gr.Textbox = field(init=False)

    def render(self, default_method: str) -> None:
        names = poolcore.methods()
        self.method = gr.Dropdown(
            names, value=default_method, label="Method", elem_id=f"{self.prefix}-method"
        )
        self.description = gr.Markdown(
            self._description(default_method), elem_id=f"{self.prefix}-description"
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

    def _description(self, method: str) -> str:
        spec = poolcore.get_spec(method)
        base = f" (preset of `{spec.base}`)" if spec.base else ""
        return f"{spec.description}{base}"

    def _start_value(self, fld: Field) -> Any:
        if fld.name in self.window_defaults and (fld.default is None or fld.required):
            return self.window_defaults[fld.name]
        if fld.required or fld.default is None:
            return None if fld.bounded else ""
        if fld.kind in ("bool",) or fld.bounded:
            return fld.default
        return format_value(fld.default)

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
        # "" rather than None: a None value makes the field a required argument of the page's API.
        return gr.Textbox(value="" if value is None else value, max_lines=1, **common)

    # ---- events ---------------------------------------------------------------------------------
    def inputs(self) -> list[gr.components.Component]:
        return [self.method, self.form, *self.widgets.values()]

    def read(self, args: Sequence[Any]) -> tuple[str, dict[str, Any]]:
        """``(method, params)`` from the values of :meth:`inputs`, in order."""
        method, form, *values = args
        params = collect_params(method, form, dict(zip(self.widgets, values, strict=True)))
        return method, params

    def on_method(self, method: str, form: str, *values: Any) -> list[Any]:
        """Show the new method's fields (keeping window values), its description, form, mode and seed."""
        spec = poolcore.get_spec(method)
        forms = window_forms(method)
        form = form if form in forms else (forms[0] if forms else "kernel")
        shown = visible_names(method, form)
        own = {f.key: f for f in fields_of(method)}
        updates: list[Any] = [
            gr.update(value=self._description(method)),
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
            updates.append(gr.update(**update))
        updates.append(
            gr.update(visible=spec.takes_training, value="eval" if not spec.takes_training else None)
        )
        updates.append(gr.update(visible=spec.random))
        return updates

    def method_outputs(self) -> list[gr.components.Component]:
        return [self.description, self.form, *self.widgets.values(), self.mode, self.seed]

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
        self.method.change(self.on_method, self.inputs(), self.method_outputs(), queue=False)
        self.form.change(self.on_form, [self.method, self.form], list(self.widgets.values()), queue=False)
        gr.on(
            [self.method.change, self.mode.change],
            _again_visible,
            [self.method, self.mode],
            again,
            queue=False,
        )

    def changes(self) -> list[Any]:
        return [c.change for c in [*self.inputs(), self.mode, self.seed]]  # type: ignore[attr-defined]


def _again_visible(method: str, mode: str) -> Any:
    return gr.update(visible=mode == "train" and poolcore.get_spec(method).random)


# ---- image tab ----------------------------------------------------------------------------------------
def _image_tab(origin: gr.Textbox, runtime: Runtime) -> None:
    panel = ControlPanel("image", IMAGE_WINDOW)
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            panel.render(poolcore.methods()[0])
            with gr.Row():
                run = gr.Button("Pool", variant="primary", elem_id="image-run")
                again = gr.Button("Sample again", visible=False, elem_id="image-again")
        with gr.Column(scale=2):
            with gr.Row(equal_height=True):
                # The file as uploaded (image_mode=None: Gradio converts nothing), for the service's codec.
                source = gr.Image(
                    label="Input",
                    type="filepath",
                    image_mode=None,
                    format="png",
                    sources=["upload", "clipboard"],
                    height=360,
                    elem_id="image-input",
                    elem_classes=["pool-view"],
                )
                result = gr.Image(
                    label="Output (true size, shown upscaled with nearest neighbour)",
                    type="pil",
                    format="png",
                    interactive=False,
                    height=360,
                    elem_id="image-output",
                    elem_classes=["pool-view"],
                )
            info = gr.Markdown(
                "Upload an image or pick an example, then press **Pool**.", elem_id="image-info"
            )
            gr.Examples([[p] for p in example_paths()], inputs=[source], label="Example images")
    with gr.Accordion("API snippet: the same call over HTTP", open=True):
        snippet = gr.Markdown(elem_id="image-snippet")

    def run_fn(base: str, image: str | None, mode: str, seed: Any, *args: Any) -> list[Any]:
        method, params = panel.read(args)
        base = _base(base)
        try:
            res = pool_image(runtime, image, method, params, mode=mode or "eval", seed=_seed(seed))
        except PageError as error:
            code = snippets.image_snippet(
                base, method, snippets.request_params(params, mode or "eval", _seed_text(seed))
            )
            return [None, error.markdown(), code, gr.update()]
        used = res.outcome.params.get("seed")
        code = snippets.image_snippet(base, res.outcome.method, snippets.request_params(params, mode, used))
        return [
            res.image,
            _info(res.input_shape, res.outcome),
            code,
            gr.update(value=str(used)) if used is not None else gr.update(),
        ]

    def again_fn(base: str, image: str | None, mode: str, seed: Any, *args: Any) -> list[Any]:
        return run_fn(base, image, mode, None, *args)

    def snippet_fn(base: str, mode: str, seed: Any, *args: Any) -> str:
        method, params = panel.read(args)
        return snippets.image_snippet(
            _base(base), method, snippets.request_params(params, mode, _seed_text(seed))
        )

    inputs = [origin, source, panel.mode, panel.seed, *panel.inputs()]
    outputs = [result, info, snippet, panel.seed]
    run.click(run_fn, inputs, outputs, api_name="pool_image")
    again.click(again_fn, inputs, outputs, api_name="sample_image")
    panel.wire(again)
    gr.on(
        [origin.change, *panel.changes()],
        snippet_fn,
        [origin, panel.mode, panel.seed, *panel.inputs()],
        snippet,
        queue=False,
    )


# ---- compare tab --------------------------------------------------------------------------------------
def _compare_tab(origin: gr.Textbox, runtime: Runtime) -> None:
    any_training = any(poolcore.get_spec(m).takes_training for m in poolcore.methods())
    any_random = any(poolcore.get_spec(m).random for m in poolcore.methods())
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            gr.Markdown(
                "Every registered method on one input. Methods with sliding windows use **kernel_size**; "
                "adaptive presets use **output_size**; global presets pool everything to one value."
            )
            kernel = gr.Textbox(
                "4",
                label="kernel_size",
                info="an int or one per dim, e.g. 2,3",
                elem_id="compare-kernel_size",
            )
            output = gr.Textbox(
                "16",
                label="output_size",
                info="for adaptive presets; null keeps that size",
                elem_id="compare-output_size",
            )
            with gr.Row():
                mode = gr.Radio(
                    ["eval", "train"],
                    value="eval",
                    label="Mode",
                    visible=any_training,
                    elem_id="compare-mode",
                )
                seed = gr.Textbox(
                    value="",
                    label="Seed",
                    placeholder="random",
                    max_lines=1,
                    visible=any_random,
                    info="blank: drawn per run",
                    elem_id="compare-seed",
                )
            run = gr.Button("Pool with every method", variant="primary", elem_id="compare-run")
        with gr.Column(scale=2):
            source = gr.Image(
                label="Input",
                type="filepath",
                image_mode=None,
                format="png",
                height=360,
                sources=["upload", "clipboard"],
                elem_id="compare-input",
                elem_classes=["pool-view"],
            )
            gr.Examples([[p] for p in example_paths()], inputs=[source], label="Example images")
    gallery = gr.Gallery(
        label="Pooled by every method (true size, shown upscaled with nearest neighbour)",
        columns=5,
        object_fit="contain",
        format="png",
        height="auto",
        elem_id="compare-gallery",
    )
    errors = gr.Markdown(elem_id="compare-info")
    with gr.Accordion("API snippet: the same calls over HTTP", open=True):
        snippet = gr.Markdown(elem_id="compare-snippet")

    def calls(
        kernel_text: str, output_text: str, mode: str, seed: int | str | None
    ) -> dict[str, dict[str, Any]]:
        k = parse_text(kernel_text) if kernel_text.strip() else None
        o = parse_text(output_text) if output_text.strip() else None
        out = {}
        for method in poolcore.methods():
            spec = poolcore.get_spec(method)
            params = compare_params(method, k, o)
            out[method] = snippets.request_params(
                params, mode if spec.takes_training else "eval", seed if spec.random else None
            )
        return out

    def run_fn(
        base: str, image: str | None, kernel_text: str, output_text: str, mode: str, seed: Any
    ) -> list[Any]:
        mode = mode or "eval"
        try:
            seed_value = _seed(seed)
        except PageError as error:
            return [[], error.markdown(), snippet_fn(base, kernel_text, output_text, mode, seed)]
        items: list[tuple[Image.Image, str]] = []
        problems: list[str] = []
        used_calls = calls(kernel_text, output_text, mode, seed_value)
        for method, request_params in used_calls.items():
            params = {k: v for k, v in request_params.items() if k not in ("mode", "seed")}
            spec = poolcore.get_spec(method)
            try:
                res = pool_image(
                    runtime,
                    image,
                    method,
                    params,
                    mode=mode if spec.takes_training else "eval",
                    seed=seed_value,
                )
            except PageError as error:
                problems.append(f"- `{method}`: {error.markdown()}")
                if error.status == 400:
                    break
                continue
            used = res.outcome.params.get("seed")
            if used is not None:
                request_params["seed"] = used
            label = f"{method} · {_shape(res.outcome.output.shape)} · {res.outcome.elapsed_ms:.2f} ms"
            items.append((res.image, label))
        summary = f"{len(items)} of {len(used_calls)} methods ran"
        text = summary + (" — problems:\n" + "\n".join(problems) if problems else ".")
        return [items, text, snippets.compare_snippet(_base(base), used_calls)]

    run.click(
        run_fn, [origin, source, kernel, output, mode, seed], [gallery, errors, snippet], api_name="compare"
    )

    def snippet_fn(base: str, kernel_text: str, output_text: str, mode: str, seed: Any) -> str:
        return snippets.compare_snippet(
            _base(base), calls(kernel_text, output_text, mode or "eval", _seed_text(seed))
        )

    gr.on(
        [origin.change, kernel.change, output.change, mode.change, seed.change],
        snippet_fn,
        [origin, kernel, output, mode, seed],
        snippet,
        queue=False,
    )


# ---- tensor tab ---------------------------------------------------------------------------------------
def _probability_html(windows: list[Any]) -> str:
    tables = []
    for window in windows[:MAX_PROBABILITY_TABLES]:
        i, j = window.index
        caption = (
            f"window [{i},{j}]: rows {window.rows.start}–{window.rows.stop - 1}, "
            f"cols {window.cols.start}–{window.cols.stop - 1}"
        )
        if window.probabilities is None:
            body = "<tr><td>Σa = 0: no probabilities</td></tr>"
        else:
            body = "".join(
                "<tr>" + "".join(f"<td>{float(p):.3f}</td>" for p in row) + "</tr>"
                for row in window.probabilities
            )
        tables.append(f"<table class='prob-table'><caption>{caption}</caption>{body}</table>")
    more = len(windows) - MAX_PROBABILITY_TABLES
    tail = f"<p>… and {more} more windows</p>" if more > 0 else ""
    return (
        "<div id='tensor-prob-maps'><b>p = a / Σa in each window</b><br>" + "".join(tables) + tail + "</div>"
    )


def _frequency_frame(windows: list[Any], counts: list[Any], draws: int) -> pd.DataFrame:
    rows = []
    several = len(windows) > 1
    for window, count in zip(windows, counts, strict=True):
        i, j = window.index
        for (r, c), n in zip(window.positions(), count.flatten().tolist(), strict=True):
            where = f"w[{i},{j}] a[{r},{c}]" if several else f"a[{r},{c}]"
            exact = (
                0.0
                if window.probabilities is None
                else float(window.probabilities[r - window.rows.start, c - window.cols.start])
            )
            rows.append(
                {"position": f"{where} sampled", "share": n / draws, "series": f"sampled ({draws} draws)"}
            )
            rows.append({"position": f"{where} exact", "share": exact, "series": "exact p"})
    return pd.DataFrame(rows, columns=["position", "share", "series"])


def _tensor_tab(origin: gr.Textbox, runtime: Runtime) -> None:
    names = poolcore.methods()
    default = "stochastic" if "stochastic" in names else names[0]
    panel = ControlPanel("tensor", TENSOR_WINDOW)
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            matrix = gr.Dataframe(
                value=SEED_MATRIX,
                type="array",
                datatype="number",
                interactive=True,
                label="Input matrix (one channel, H×W): the seed's 3×3 example",
                elem_id="tensor-input",
            )
            panel.render(default)
            draws = gr.Slider(
                10,
                20000,
                value=2000,
                step=10,
                label="Draws for the frequency plot",
                visible=is_stochastic(default),
                elem_id="tensor-draws",
            )
            with gr.Row():
                run = gr.Button("Pool", variant="primary", elem_id="tensor-run")
                again = gr.Button("Sample again", visible=False, elem_id="tensor-again")
        with gr.Column(scale=1):
            result = gr.Dataframe(
                label="Pooled result", interactive=False, type="array", elem_id="tensor-output"
            )
            info = gr.Markdown("Press **Pool**.", elem_id="tensor-info")
            probabilities = gr.HTML(visible=is_stochastic(default), elem_id="tensor-probabilities")
            plot = gr.BarPlot(
                x="position",
                y="share",
                color="series",
                title="How often each position was chosen, next to its exact probability",
                x_title="position",
                y_title="share of draws",
                x_label_angle=-45,
                sort=None,
                visible=is_stochastic(default),
                elem_id="tensor-plot",
            )
    with gr.Accordion("API snippet: the same call over HTTP", open=True):
        snippet = gr.Markdown(elem_id="tensor-snippet")

    def code(
        base: str, rows: Any, method: str, params: dict[str, Any], mode: str, seed: int | str | None
    ) -> str:
        try:
            data: Any = [matrix_values(rows)]
        except PageError:
            data = [rows]
        # The matrix goes out as one (1, H, W) plane: dims=2 says it is pooled as an image.
        sent = plane_params(method, params)
        return snippets.json_snippet(base, method, data, snippets.request_params(sent, mode, seed))

    def run_fn(base: str, rows: Any, mode: str, seed: Any, n_draws: Any, *args: Any) -> list[Any]:
        method, params = panel.read(args)
        mode = mode or "eval"
        base = _base(base)
        stochastic = is_stochastic(method)
        try:
            x = parse_matrix(rows)
            sent = plane_params(method, params)  # a (1, H, W) plane, pooled in 2d (the snippet says so too)
            outcome = pool_tensor(runtime, x.unsqueeze(0), method, sent, mode=mode, seed=_seed(seed))
        except PageError as error:
            return [
                None,
                error.markdown(),
                gr.update(visible=False, value=""),
                gr.update(visible=False),
                code(base, rows, method, params, mode, _seed_text(seed)),
                gr.update(),
            ]
        used = outcome.params.get("seed")
        shown = [[round(float(v), 6) for v in row] for row in outcome.output[0].tolist()]
        text = _info(tuple(x.unsqueeze(0).shape), outcome)
        prob_update: Any = gr.update(visible=False)
        plot_update: Any = gr.update(visible=False)
        if stochastic:
            try:
                windows = guard(lambda: window_probabilities(x, method, params))
                draw_seed = used if used is not None else (_seed(seed) or 0)
                n = int(n_draws)
                if n * x.numel() > MAX_DRAW_ELEMENTS:
                    raise PageError(
                        413,
                        f"too many draws for the frequency plot: draws × matrix elements is {n * x.numel()}, "
                        f"over the limit of {MAX_DRAW_ELEMENTS}; use fewer draws or a smaller matrix",
                    )
                plotted = windows[:MAX_PLOTTED_WINDOWS]
                counts = runtime.run(  # the draws are torch work too
                    lambda: guard(
                        lambda: sample_counts(
                            x, method, params, plotted, draws=n, seed=draw_seed, device=runtime.device()
                        )
                    )
                )
            except PageError as error:
                text += f"\n\n{error.markdown()}"
            else:
                prob_update = gr.update(visible=True, value=_probability_html(windows))
                frame = _frequency_frame(plotted, counts, n)
                plot_update = gr.update(visible=True, value=frame)
                sampled = frame[frame.series != "exact p"].share.to_numpy()
                exact = frame[frame.series == "exact p"].share.to_numpy()
                gap = float(abs(sampled - exact).max()) if len(exact) else 0.0
                text += (
                    f"\n\nFrequencies: {n} train-mode draws with seed {draw_seed}; largest gap to the "
                    f"exact probability {gap:.3f}."
                )
        return [
            shown,
            text,
            prob_update,
            plot_update,
            code(base, rows, outcome.method, params, mode, used),
            gr.update(value=str(used)) if used is not None else gr.update(),
        ]

    def again_fn(base: str, rows: Any, mode: str, seed: Any, n_draws: Any, *args: Any) -> list[Any]:
        return run_fn(base, rows, mode, None, n_draws, *args)

    def snippet_fn(base: str, rows: Any, mode: str, seed: Any, *args: Any) -> str:
        method, params = panel.read(args)
        return code(_base(base), rows, method, params, mode or "eval", _seed_text(seed))

    def on_method(method: str) -> list[Any]:
        visible = is_stochastic(method)
        return [gr.update(visible=visible), gr.update(visible=visible), gr.update(visible=visible)]

    inputs = [origin, matrix, panel.mode, panel.seed, draws, *panel.inputs()]
    outputs = [result, info, probabilities, plot, snippet, panel.seed]
    run.click(run_fn, inputs, outputs, api_name="pool_tensor")
    again.click(again_fn, inputs, outputs, api_name="sample_tensor")
    panel.wire(again)
    panel.method.change(on_method, [panel.method], [draws, probabilities, plot], queue=False)
    snippet_inputs = [origin, matrix, panel.mode, panel.seed, *panel.inputs()]
    gr.on([origin.change, *panel.changes(), matrix.change], snippet_fn, snippet_inputs, snippet, queue=False)


def build_blocks(runtime: Runtime) -> gr.Blocks:
    """The whole page; handlers read the device and limits from ``runtime`` when they run."""
    with gr.Blocks(title="poolserve", analytics_enabled=False) as blocks:
        gr.Markdown(
            "# poolserve\nSee what each pooling method does. Every control comes from the method registry; "
            "every run calls the same in-process function as `POST /pool/{method}`."
        )
        # The browser's own origin, for the snippets; filled in by the page itself on load.
        origin = gr.Textbox(visible=False, elem_id="origin")
        blocks.load(None, None, origin, js="() => window.location.origin")
        with gr.Tabs():
            with gr.Tab("Image", id="image"):
                _image_tab(origin, runtime)
            with gr.Tab("Compare", id="compare"):
                _compare_tab(origin, runtime)
            with gr.Tab("Tensor", id="tensor"):
                _tensor_tab(origin, runtime)
    return blocks
