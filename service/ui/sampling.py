"""Stochastic pooling made visible (Zeiler & Fergus 2013): each window's probabilities, and how often each
position is chosen over N seeded draws.

Which position a draw chose is read from the gradient, which stochastic pooling routes to the sampled
position only: a value that appears twice in a window would be ambiguous from the output alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import poolcore
from poolcore.windows import make_window

__all__ = ["WindowProbabilities", "is_stochastic", "sample_counts", "window_probabilities"]

_WINDOW_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "output_size", "dilation")


def is_stochastic(method: str) -> bool:
    """True for a method whose training draws one input per window (``MethodSpec.draws_positions``),
    and the presets built on it: the sampling panel applies to it."""
    return poolcore.get_spec(method).draws_positions


@dataclass(frozen=True)
class WindowProbabilities:
    """One output position's window: its index, the input rows/cols it covers (stepping by the dilation),
    and p = a / Σa."""

    index: tuple[int, int]
    rows: range
    cols: range
    probabilities: Tensor | None  # rows × cols; None when the window sums to 0

    def positions(self) -> list[tuple[int, int]]:
        return [(r, c) for r in self.rows for c in self.cols]


def window_probabilities(matrix: Tensor, method: str, params: Mapping[str, Any]) -> list[WindowProbabilities]:
    """Every window of a H×W ``matrix`` under the method's resolved window, with its exact probabilities.

    Padding adds zeros, which have probability 0, so only real positions are listed.
    """
    resolved = poolcore.get_spec(method).resolve(params)
    args: dict[str, Any] = {k: resolved[k] for k in _WINDOW_ARGS if k in resolved}
    window = make_window(tuple(matrix.shape), 2, **args)
    (row_starts, row_ends), (col_starts, col_ends) = window.bounds(0), window.bounds(1)
    dr, dc = window.step(0), window.step(1)
    out = []
    values = matrix.double()
    for i, (r0, r1) in enumerate(zip(row_starts, row_ends, strict=True)):
        for j, (c0, c1) in enumerate(zip(col_starts, col_ends, strict=True)):
            block = values[r0:r1:dr, c0:c1:dc]
            total = float(block.sum())
            rows, cols = range(r0, r1, dr), range(c0, c1, dc)
            out.append(WindowProbabilities((i, j), rows, cols, block / total if total else None))
    return out


def sample_counts(
    matrix: Tensor,
    method: str,
    params: Mapping[str, Any],
    windows: list[WindowProbabilities],
    *,
    draws: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> list[Tensor]:
    """For each of ``windows``, a rows × cols tensor counting how often each position was sampled in
    ``draws`` train-mode forward passes (one batch of ``draws`` copies, one seeded generator)."""
    spec = poolcore.get_spec(method)
    generator = torch.Generator(device=torch.device(device)).manual_seed(int(seed))
    batch = matrix.to(device=device, dtype=torch.float64).expand(draws, 1, *matrix.shape).clone()
    batch.requires_grad_(True)
    with torch.enable_grad():
        out = spec(batch, params, training=True, generator=generator)
        counts = []
        for window in windows:
            i, j = window.index
            (grad,) = torch.autograd.grad(out[:, 0, i, j].sum(), batch, retain_graph=True)
            rows, cols = window.rows, window.cols
            picked = grad[:, 0, rows.start : rows.stop : rows.step, cols.start : cols.stop : cols.step]
            counts.append(picked.sum(0).detach().cpu())
    return counts
