"""A brute-force pooling reference: explicit windows from the closed-form formulas, one output at a time.

Independent of ``poolcore.windows``: window bounds are written out here from their definitions
(torch's ``pooling_output_shape`` for kernels, ``floor(i*L/out)``/``ceil((i+1)*L/out)`` for adaptive bins)
and each window's real positions are reduced with plain tensor ops in float64. Small inputs only.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def kernel_bounds(length: int, k: int, s: int, p: int, ceil_mode: bool) -> list[tuple[int, int]]:
    """Real-position ``[start, end)`` of each sliding window along one dim."""
    span = length + 2 * p - k
    out = (math.ceil(span / s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= length + p:  # the last window must start inside input or left pad
        out -= 1
    return [(max(i * s - p, 0), min(i * s - p + k, length)) for i in range(out)]


def adaptive_bounds(length: int, out: int) -> list[tuple[int, int]]:
    return [(math.floor(i * length / out), math.ceil((i + 1) * length / out)) for i in range(out)]


def reduce_windows(
    x: Tensor, bounds: Sequence[list[tuple[int, int]]], reduce: Callable[[Tensor], Tensor]
) -> Tensor:
    """``x`` is ``(B, C, *spatial)``; ``bounds`` one list per spatial dim; ``reduce`` maps a ``(B, C, n)``
    tensor of a window's real values to ``(B, C)``."""
    x = x.double()
    out = torch.empty(*x.shape[:2], *(len(b) for b in bounds), dtype=torch.float64)
    for index in itertools.product(*(range(len(b)) for b in bounds)):
        region = tuple(slice(*bounds[d][i]) for d, i in enumerate(index))
        values = x[(..., *region)].reshape(*x.shape[:2], -1)
        out[(..., *index)] = reduce(values)
    return out


def pooled(
    x: Tensor,
    reduce: Callable[[Tensor], Tensor],
    kernel_size: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    padding: Sequence[int] | None = None,
    ceil_mode: bool = False,
    output_size: Sequence[int | None] | None = None,
) -> Tensor:
    """Reference pooling of a batched ``(B, C, *spatial)`` input with tuple window arguments."""
    spatial = x.shape[2:]
    if output_size is not None:
        bounds = [adaptive_bounds(n, n if o is None else o) for n, o in zip(spatial, output_size)]
    else:
        if kernel_size is None:
            raise ValueError("give kernel_size or output_size")
        stride = stride or kernel_size
        padding = padding or [0] * len(spatial)
        bounds = [
            kernel_bounds(n, k, s, p, ceil_mode) for n, k, s, p in zip(spatial, kernel_size, stride, padding)
        ]
    return reduce_windows(x, bounds, reduce)


def mean(v: Tensor) -> Tensor:
    return v.mean(-1)


def vmax(v: Tensor) -> Tensor:
    return v.amax(-1)


def lp(p: float) -> Callable[[Tensor], Tensor]:
    if math.isinf(p):
        return lambda v: v.abs().amax(-1)
    return lambda v: v.abs().pow(p).sum(-1).pow(1 / p)


def gem(p: float, eps: float) -> Callable[[Tensor], Tensor]:
    if math.isinf(p):
        return lambda v: v.clamp_min(eps).amax(-1)
    return lambda v: v.clamp_min(eps).pow(p).mean(-1).pow(1 / p)
