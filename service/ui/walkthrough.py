"""One output cell of the Tensor tab, worked by hand: its window highlighted on the input and the method's
formula written out with that window's numbers (the 3×3 example: Σa²/Σa = 16.52/10 = 1.652).

In train mode the page says what was drawn: for ``stochastic`` each position's probability and the
position whose value came out; for ``mixed`` the λ (max branch or average branch).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

import poolcore

from .sampling import WindowProbabilities, window_probabilities

__all__ = ["explain", "num", "parse_cell"]

_CLOSE = 1e-5


def num(value: float) -> str:
    """Four significant digits, no trailing zeros: 16.52, 10, 1.652."""
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    text = f"{value:.4g}"
    return text


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
    base: str,
    a: Tensor,
    y: float,
    resolved: Mapping[str, Any],
    train: bool,
    window: WindowProbabilities,
    picked: tuple[int, int] | None = None,
) -> tuple[list[str], set[tuple[int, int]]]:
    """The computation, one step a line, and the positions a train-mode draw picked (``picked``: the one
    the operator's index names; without it, the positions whose value equals the output)."""
    values = a.flatten().double()
    n = values.numel()
    s = float(values.sum())
    drawn: set[tuple[int, int]] = set()
    lines = [f"a = [{', '.join(num(float(v)) for v in values)}]  (n = {n})"]
    if base == "avg":
        lines.append(f"y = Σa / n = {num(s)} / {n} = {num(s / n)}")
        if abs(s / n - y) > _CLOSE * max(1.0, abs(y)):
            lines.append(f"torch divides by the padded window size here: y = {num(y)}")
    elif base == "max":
        lines.append(f"y = max(a) = {num(y)}")
    elif base == "stochastic":
        s2 = float((values * values).sum())
        if not train:
            value = s2 / s if s else 0.0
            lines.append(f"y = Σa² / Σa = {num(s2)} / {num(s)} = {num(value)}" if s else "Σa = 0: y = 0")
        else:
            probabilities = ", ".join(f"{num(float(v) / s)}" for v in values) if s else "none (Σa = 0)"
            lines.append(f"p = a / Σa = a / {num(s)} = [{probabilities}]")
            positions = window.positions()
            if picked is not None:
                drawn.add(picked)
            else:
                for (r, c), v in zip(positions, values.tolist(), strict=True):
                    if abs(v - y) <= _CLOSE * max(1.0, abs(y)) and (v > 0 or not s):
                        drawn.add((r, c))
            where = " or ".join(f"a[{r},{c}]" for r, c in sorted(drawn)) or "?"
            p_drawn = num(y / s) if s else "—"
            if len(drawn) > 1:  # equal values: the output cannot say which of them was drawn
                lines.append(f"drawn: {where} (equal values, p = {p_drawn} each); y = {num(y)}")
            else:
                lines.append(f"drawn: {where} = {num(y)} (p = {p_drawn}); y = {num(y)}")
    elif base == "mixed":
        big, mean = float(values.max()), s / n
        p_max = float(resolved.get("p_max", 0.5))
        if not train:
            value = p_max * big + (1 - p_max) * mean
            lines.append(
                f"y = p_max·max(a) + (1 − p_max)·mean(a) = {num(p_max)}·{num(big)} + "
                f"{num(1 - p_max)}·{num(mean)} = {num(value)}"
            )
        else:
            is_max = abs(y - big) <= _CLOSE * max(1.0, abs(y))
            is_mean = abs(y - mean) <= _CLOSE * max(1.0, abs(y))
            lines.append(f"max(a) = {num(big)}, mean(a) = {num(mean)}, P(λ = 1) = p_max = {num(p_max)}")
            if is_max and is_mean:
                lines.append(f"y = {num(y)}: max and mean are equal here, so either λ gives it")
            elif is_max:
                lines.append(f"λ drawn = 1 (the max branch): y = max(a) = {num(y)}")
            elif is_mean:
                lines.append(f"λ drawn = 0 (the average branch): y = mean(a) = {num(y)}")
            else:
                lines.append(f"y = {num(y)}")
    elif base == "lp":
        p = float(resolved.get("p", 2.0))
        if math.isinf(p):
            lines.append(f"y = max|a| = {num(float(values.abs().max()))}")
        else:
            sp = float((values.abs() ** p).sum())
            lines.append(f"y = (Σ|a|^p)^(1/p) = ({num(sp)})^(1/{num(p)}) = {num(sp ** (1 / p))}")
    elif base == "gem":
        p, eps = float(resolved.get("p", 3.0)), float(resolved.get("eps", 1e-6))
        clamped = values.clamp(min=eps)
        if math.isinf(p):
            lines.append(f"y = max(max(a, ε)) = {num(float(clamped.max()))}")
        else:
            mp = float((clamped**p).mean())
            lines.append(f"y = (mean(max(a, ε)^p))^(1/p) = ({num(mp)})^(1/{num(p)}) = {num(mp ** (1 / p))}")
    else:
        lines.append(f"y = {num(y)}")
    return lines, drawn


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
    lines, drawn = _lines(spec.base or spec.name, a, y, resolved, train, window, picked)
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
