"""The Tensor tab: one method on a small matrix, every number visible. Pick an output cell and its window
is highlighted on the input with the computation written out (:mod:`.walkthrough`); stochastic methods
add each window's probabilities and how often N seeded draws chose each position (:mod:`.sampling`).
Its button is the public endpoint ``/pool_tensor``; the page sends the matrix as one channel, 1×H×W.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd
import torch

import poolcore

from . import snippets
from .handlers import PageError, Runtime, guard, matrix_values, parse_matrix, plane_params, pool_tensor
from .panel import PRIVATE, ControlPanel, api_function, base_url, outcome_markdown, parse_seed, seed_text
from .sampling import is_stochastic, sample_counts, window_probabilities
from .walkthrough import explain, parse_cell

__all__ = ["SEED_MATRIX", "TENSOR_WINDOW", "tensor_tab"]

# A worked example: one 3×3 window summing to 10; the eval value is 16.52 / 10 = 1.652.
SEED_MATRIX = [[0.0, 1.1, 2.5], [0.9, 2.0, 1.0], [0.0, 1.5, 1.0]]
TENSOR_WINDOW = {"kernel_size": "3", "output_size": "1"}
MAX_PROBABILITY_TABLES = 16
MAX_PLOTTED_WINDOWS = 4
# The draws run as one batch of copies of the matrix (in float64, with autograd): keep that batch small.
MAX_DRAW_ELEMENTS = 4_000_000
DEFAULT_DRAWS = 2000


@dataclass(frozen=True)
class Run:
    """What the walk-through needs of the last run (kept in a gr.State, so not part of the API)."""

    matrix: list[list[float]]
    method: str
    params: dict[str, Any]
    mode: str
    seed: int | None
    output: list[list[float]]


def _probability_html(windows: list[Any]) -> str:
    tables = []
    for window in windows[:MAX_PROBABILITY_TABLES]:
        i, j = window.index
        caption = (
            f"window [{i},{j}]: rows {window.rows[0]}–{window.rows[-1]}, "
            f"cols {window.cols[0]}–{window.cols[-1]}"
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
                else float(window.probabilities[window.rows.index(r), window.cols.index(c)])
            )
            rows.append(
                {"position": f"{where} drawn", "share": n / draws, "series": f"sampled ({draws} draws)"}
            )
            rows.append({"position": f"{where} p", "share": exact, "series": "exact p"})
    return pd.DataFrame(rows, columns=["position", "share", "series"])


def _explain(runtime: Runtime, run: Run | None, cell_text: Any, n_draws: Any) -> list[Any]:
    """The walk-through, probability tables and frequency plot for one output cell of ``run``."""
    if run is None:
        return ["", gr.update(visible=False), gr.update(visible=False)]
    x = torch.tensor(run.matrix, dtype=torch.float32)
    output = torch.tensor(run.output, dtype=torch.float64)
    note = ""
    try:
        try:
            cell = parse_cell(cell_text or "0,0", tuple(output.shape))
        except ValueError as error:
            # A cell of an earlier, larger result: show the first window rather than nothing.
            if "outside" not in str(error):
                raise PageError(422, str(error)) from None
            note = f"<p>{html.escape(str(error))}: showing [0,0].</p>"
            cell = (0, 0)
        walk = note + guard(lambda: explain(x, run.method, run.params, output, cell, run.mode))
    except PageError as error:
        return [f"<p>{error.markdown()}</p>", gr.update(visible=False), gr.update(visible=False)]
    if not is_stochastic(run.method):
        return [walk, gr.update(visible=False), gr.update(visible=False)]
    try:
        windows = guard(lambda: window_probabilities(x, run.method, run.params))
        n = int(n_draws or DEFAULT_DRAWS)
        if n * x.numel() > MAX_DRAW_ELEMENTS:
            raise PageError(
                413,
                f"too many draws for the frequency plot: draws × matrix elements is {n * x.numel()}, "
                f"over the limit of {MAX_DRAW_ELEMENTS}; use fewer draws or a smaller matrix",
            )
        # The chosen cell's window first, so the plot always shows it.
        chosen = [w for w in windows if w.index == cell]
        plotted = (chosen + [w for w in windows if w.index != cell])[:MAX_PLOTTED_WINDOWS]
        draw_seed = run.seed or 0
        counts = runtime.run(  # the draws are torch work too
            lambda: guard(
                lambda: sample_counts(
                    x, run.method, run.params, plotted, draws=n, seed=draw_seed, device=runtime.device()
                )
            )
        )
    except PageError as error:
        return [walk + f"<p>{error.markdown()}</p>", gr.update(visible=False), gr.update(visible=False)]
    frame = _frequency_frame(plotted, counts, n)
    sampled = frame[frame.series != "exact p"].share.to_numpy()
    exact = frame[frame.series == "exact p"].share.to_numpy()
    gap = float(abs(sampled - exact).max()) if len(exact) else 0.0
    walk += (
        f"<p>Frequencies: {n} train-mode draws with seed {draw_seed}; largest gap to the exact "
        f"probability {gap:.3f}.</p>"
    )
    return [
        walk,
        gr.update(visible=True, value=_probability_html(windows)),
        gr.update(visible=True, value=frame),
    ]


def _pool_matrix(runtime: Runtime, panel: ControlPanel, rows: Any, args: Sequence[Any]) -> list[Any]:
    """The public ``/pool_tensor``: pooled rows, summary, seed, and the run for the walk-through."""
    *controls, mode, seed = args
    method, params = panel.read(controls)
    mode = mode or "eval"
    rows = SEED_MATRIX if rows is None else rows
    try:
        x = parse_matrix(rows)
        sent = plane_params(method, params)  # a (1, H, W) plane, pooled in 2d (the snippet says so too)
        outcome = pool_tensor(runtime, x.unsqueeze(0), method, sent, mode=mode, seed=parse_seed(seed))
    except PageError as error:
        return [None, error.markdown(), "" if seed is None else str(seed), None]
    used = outcome.params.get("seed")
    shown = [[round(float(v), 6) for v in row] for row in outcome.output[0].tolist()]
    state = Run(x.tolist(), method, params, mode, used, outcome.output[0].double().tolist())
    return [
        shown,
        outcome_markdown(tuple(x.unsqueeze(0).shape), outcome),
        str(used) if used is not None else ("" if seed is None else str(seed)),
        state,
    ]


def tensor_tab(blocks: gr.Blocks, origin: gr.Textbox, runtime: Runtime) -> None:
    names = poolcore.methods()
    # The first method the sampling panel applies to shows the most; else the first method.
    default = next((name for name in names if is_stochastic(name)), names[0])
    panel = ControlPanel("tensor", TENSOR_WINDOW)
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            matrix = gr.Dataframe(
                value=SEED_MATRIX,
                type="array",
                datatype="number",
                interactive=True,
                label="Input matrix (one channel, H×W; sent as 1×H×W): a 3×3 example window",
                elem_id="tensor-input",
            )
            panel.render(default)
            draws = gr.Slider(
                10,
                20000,
                value=DEFAULT_DRAWS,
                step=10,
                label="Draws for the frequency plot",
                visible=is_stochastic(default),
                elem_id="tensor-draws",
            )
            with gr.Row():
                run = gr.Button("Pool", variant="primary", elem_id="tensor-run")
                again = gr.Button("Sample again", visible=False, elem_id="tensor-again")
            panel.render_guide(default)
        # Nothing empty on first load: the example window is pooled and explained when the page loads (not
        # while the app is built, which must stay cheap).
        with gr.Column(scale=1):
            result = gr.Dataframe(
                value=None,
                label="Pooled result (click a cell to walk through its window)",
                interactive=False,
                type="array",
                elem_id="tensor-output",
            )
            info = gr.Markdown("", label="Summary", elem_id="tensor-info")
            cell = gr.Textbox(
                "0,0",
                label="Output cell to walk through",
                info="row,col of the pooled result; or click a cell above",
                max_lines=1,
                elem_id="tensor-cell",
            )
            walk = gr.HTML("", elem_id="tensor-walk")
            probabilities = gr.HTML("", visible=is_stochastic(default), elem_id="tensor-probabilities")
            plot = gr.BarPlot(
                x="position",
                y="share",
                color="series",
                label="How often each position was drawn, next to its exact probability",
                show_label=True,
                title="Drawn share vs probability",
                x_title="window position",
                y_title="share of draws",
                x_label_angle=-90,
                sort=None,
                height=360,
                value=None,
                visible=is_stochastic(default),
                elem_id="tensor-plot",
            )
    last = gr.State(None)  # the last run, for the walk-through (a State is not in the API)
    with gr.Accordion("API snippet: the same call over HTTP", open=True):
        snippet = gr.Markdown(elem_id="tensor-snippet", elem_classes=["snippet"])

    def code(
        base: str, rows: Any, method: str, params: dict[str, Any], mode: str, seed: int | str | None
    ) -> str:
        try:
            data: Any = [matrix_values(rows)]
        except PageError:
            data = [rows]
        # The matrix goes out as one (1, H, W) plane: dims=2 says it is pooled in 2d.
        sent = plane_params(method, params)
        return snippets.json_snippet(base, method, data, snippets.request_params(sent, mode, seed))

    def run_fn(rows: Any, *args: Any) -> list[Any]:
        return _pool_matrix(runtime, panel, rows, args)

    def again_fn(rows: Any, *args: Any) -> list[Any]:
        return run_fn(rows, *args[:-1], None)

    def snippet_fn(base: str, rows: Any, mode: str, seed: Any, *args: Any) -> str:
        method, params = panel.read(args)
        return code(base_url(base), rows, method, params, mode or "eval", seed_text(seed))

    def explain_fn(state: Run | None, cell_text: Any, n_draws: Any) -> list[Any]:
        return _explain(runtime, state, cell_text, n_draws)

    def select_fn(event: gr.SelectData) -> Any:
        index = event.index
        return (
            f"{index[0]},{index[1]}" if isinstance(index, (list, tuple)) and len(index) == 2 else gr.update()
        )

    def on_method(method: str) -> Any:
        return gr.update(visible=is_stochastic(method))

    names = ["matrix", *panel.input_names(), "mode", "seed"]
    inputs = [matrix, *panel.inputs(), panel.mode, panel.seed]
    outputs = [result, info, panel.seed, last]
    doc = "Pool a matrix (one channel, H×W, sent as 1×H×W); returns the pooled rows, a summary, the seed."
    explained = [last, cell, draws]
    shown = [walk, probabilities, plot]
    run.click(api_function(run_fn, names, doc), inputs, outputs, api_name="pool_tensor").then(
        explain_fn, explained, shown, api_visibility="private"
    )
    again.click(again_fn, inputs, outputs, api_name="sample_tensor", api_visibility="private").then(
        explain_fn, explained, shown, api_visibility="private"
    )
    blocks.load(run_fn, inputs, outputs, api_visibility="private").then(
        explain_fn, explained, shown, api_visibility="private"
    )
    panel.wire(again)
    panel.method.change(on_method, [panel.method], [draws], **PRIVATE)
    result.select(select_fn, None, cell, **PRIVATE)
    cell.submit(explain_fn, explained, shown, api_visibility="private")
    cell.change(explain_fn, explained, shown, api_visibility="private", trigger_mode="always_last")
    snippet_inputs = [origin, matrix, panel.mode, panel.seed, *panel.inputs()]
    gr.on([origin.change, *panel.changes(), matrix.change], snippet_fn, snippet_inputs, snippet, **PRIVATE)
