"""One output cell of the Tensor tab, worked by hand: its window highlighted on the input and the method's
formula written out with that window's numbers (the 3×3 example: Σa²/Σa = 16.52/10 = 1.652).

Each method explains its own window (``MethodSpec.explain``, in poolcore); in train mode the explanation
says what was drawn (which position, or which branch) and the page marks the drawn positions.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

import poolcore
from poolcore.hooks import WindowCase, num

from .sampling import WindowProbabilities, window_probabilities

__all__ = ["explain", "num", "parse_cell"]


def parse_cell(text: Any, shape: Sequence[int]) -> tuple[int, int]:
    """``"i,j"`` (or ``[i, j]``) as an output cell inside ``shape`` (rows, cols); ValueError names it."""
    parts = [p for p in str(text).replace("[", "").replace("]", "").replace(" ", "").split(",") if p]
    try:
        i, j = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"the output cell must be two integers 'row,col' (got {text!r})") from None
    rows, cols = shape
    if not (0 <= i < rows and 0 <= j < cols):
        raise ValueError(f"output cell [{i},{j}] is outside the {rows}×{cols} output")
    return i, j


def _table(matrix: Tensor, window: WindowProbabilities, drawn: set[tuple[int, int]]) -> str:
    rows = []
    for r, row in enumerate(matrix.tolist()):
        cells = []
        for c, value in enumerate(row):
            classes = []
            if r in window.rows and c in window.cols:
                classes.append("in-window")
            if (r, c) in drawn:
                classes.append("drawn")
            attr = f" class='{' '.join(classes)}'" if classes else ""
            cells.append(f"<td{attr}>{num(float(value))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    i, j = window.index
    caption = (
        f"input: the window of output [{i},{j}] (rows {window.rows[0]}–{window.rows[-1]}, "
        f"cols {window.cols[0]}–{window.cols[-1]}) highlighted"
    )
    return f"<table class='window-table'><caption>{html.escape(caption)}</caption>{''.join(rows)}</table>"


def _lines(
    spec: poolcore.MethodSpec,
    a: Tensor,
    y: float,
    resolved: Mapping[str, Any],
    train: bool,
    window: WindowProbabilities,
    picked: tuple[int, int] | None = None,
) -> tuple[list[str], set[tuple[int, int]]]:
    """The computation, one step a line, and the positions a train-mode draw picked: the method's own
    explanation (``MethodSpec.explain``) after the window's values (``picked``: the position the
    operator's index names, where it is known)."""
    values = a.flatten().double()
    lines = [f"a = [{', '.join(num(float(v)) for v in values)}]  (n = {values.numel()})"]
    if spec.explain is None:
        return [*lines, f"y = {num(y)}"], set()
    explained = spec.explain(WindowCase(values, window.positions(), y, resolved, train, picked))
    return [*lines, *explained.lines], set(explained.drawn)


def explain(
    matrix: Tensor,
    method: str,
    params: Mapping[str, Any],
    output: Tensor,
    cell: tuple[int, int],
    mode: str,
    indices: Tensor | None = None,
) -> str:
    """HTML: the input with the window of output ``cell`` highlighted, and its computation in numbers.

    ``matrix`` is the H×W input, ``output`` the h×w result of the run being explained, and ``indices``
    (optional) the h×w positions it drew, as ``return_indices=True`` gives them (flat over H×W): then the
    drawn position is read from there, which also tells equal values apart."""
    spec = poolcore.get_spec(method)
    resolved = spec.resolve(params)
    windows = {w.index: w for w in window_probabilities(matrix, method, params)}
    window = windows[cell]
    rows, cols = window.rows, window.cols
    a = matrix[rows.start : rows.stop : rows.step, cols.start : cols.stop : cols.step]
    y = float(output[cell])
    train = mode == "train" and spec.takes_training
    picked = divmod(int(indices[cell]), matrix.shape[-1]) if indices is not None and train else None
    lines, drawn = _lines(spec, a, y, resolved, train, window, picked)
    i, j = cell
    heading = f"<p><b>Output [{i},{j}] of {html.escape(method)} ({'train' if train else 'eval'} mode)</b></p>"
    steps = "<br>".join(html.escape(line) for line in lines)
    return (
        f"<div id='tensor-walk-body'>{heading}{_table(matrix, window, drawn)}"
        f"<p class='walk-steps' style='font-family: monospace'>{steps}</p></div>"
    )


def output_matrix(output: Tensor) -> Tensor:
    """The h×w result of a 1×H×W run."""
    return output.reshape(output.shape[-2:]).to(torch.float64)
