"""SoftPool (Stergiou, Poppe & Kalliatakis 2021, "Refining activation downsampling with SoftPool",
ICCV): each window's softmax-weighted average.

.. math::
    y = \\sum_{i \\in R} \\frac{e^{a_i}}{\\sum_{j \\in R} e^{a_j}} a_i

over each window's real positions :math:`R` (padding and ceil-mode overhang are excluded, not read as
zeros). The weights are taken after subtracting the window's maximum, which leaves them unchanged and
keeps every exponential in (0, 1] with the largest exactly 1: no overflow, and no 0/0 however far the
window lies below the rest of the input. Every window form (kernel, adaptive, global), 1d/2d/3d.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import Tensor

from ._module import DOC_SHAPES, PoolNd
from .hooks import Explanation, WindowCase, num
from .params import WindowParams
from .windows import IntTuple, OptIntTuple, Window, check_float, window_call

__all__ = ["SoftPool1d", "SoftPool2d", "SoftPool3d", "SoftPoolParams", "explain", "soft_pool"]


class SoftPoolParams(WindowParams):
    """SoftPool takes the window arguments only."""


def _by_offsets(t: Tensor, w: Window, m: Tensor) -> tuple[Tensor, Tensor]:
    """``Σ e^(a−m)·a`` and ``Σ e^(a−m)`` over each window, one window offset at a time (each step an
    output-sized op). Offsets outside the real input read 0 in :meth:`Window.offsets`; they are masked
    out by the same offsets of a tensor of ones."""
    grad = t.requires_grad and torch.is_grad_enabled()
    ones = torch.ones((1, 1, *w.in_size), dtype=torch.bool, device=t.device)
    numerator = torch.zeros_like(m)
    denominator = torch.zeros_like(m)
    for value, real in zip(w.offsets(t), w.offsets(ones), strict=True):
        # A padded position weighs e^-inf = 0. Masked at every offset: asking whether this one reaches the
        # padding would read a tensor value on the host, a sync in forward.
        shifted = torch.where(real, value - m, -math.inf)
        weight = shifted.exp() if grad else shifted.exp_()
        if grad:
            denominator = denominator + weight
            numerator = numerator + weight * value
        else:
            denominator.add_(weight)
            numerator.add_(weight.mul_(value))
    return numerator, denominator


def _by_windows(t: Tensor, w: Window) -> Tensor:
    """The result window by window, for when windows are fewer than the offsets in one (large adaptive
    bins): each window's real positions as a slice, shifted by its own maximum."""
    n = len(w.in_size)
    bounds = [w.bounds(d) for d in range(n)]
    dims = w.spatial_dims
    parts = []
    for index in itertools.product(*(range(o) for o in w.out_size)):
        where: tuple[Any, ...] = (
            ...,
            *(slice(bounds[d][0][i], bounds[d][1][i]) for d, i in enumerate(index)),
        )
        region = t[where]
        weight = (region - region.detach().amax(dim=dims, keepdim=True)).exp()
        y = (weight * region).sum(dim=dims, keepdim=True) / weight.sum(dim=dims, keepdim=True)
        parts.append(y.flatten(2))
    return torch.cat(parts, dim=2).reshape(*t.shape[:2], *w.out_size)


def _soft(b: Tensor, w: Window) -> Tensor:
    # Half and bfloat16 are weighted in float32: their 3-digit exponentials would blur the weights.
    t = b if b.dtype in (torch.float32, torch.float64) else b.float()
    # The maximum only shifts the exponents, which the ratio cancels: no gradient flows through it.
    if w.is_global:
        m = t.detach().amax(dim=w.spatial_dims, keepdim=True)
        weight = (t - m).exp()
        y = (weight * t).sum(dim=w.spatial_dims, keepdim=True) / weight.sum(dim=w.spatial_dims, keepdim=True)
    elif w.dilated or math.prod(w.max_extent(d) for d in range(len(w.in_size))) <= math.prod(w.out_size):
        # By window offsets (a dilated window's step by d); else window by window, for few large bins.
        m = w.max(t.detach())
        numerator, denominator = _by_offsets(t, w, m)
        y = numerator / denominator
    else:
        m = w.max(t.detach())
        y = _by_windows(t, w)
    # A window holding an infinity: its weight takes all (+inf), or all of it is -inf; never inf − inf.
    return torch.where(torch.isinf(m), m, y).to(b.dtype)


def soft_pool(
    x: Tensor,
    kernel_size: IntTuple | None = None,
    stride: IntTuple | None = None,
    padding: IntTuple = 0,
    ceil_mode: bool = False,
    *,
    output_size: OptIntTuple = None,
    dims: int | None = None,
    dilation: IntTuple = 1,
) -> Tensor:
    """SoftPool, the softmax-weighted average of each window; see :class:`SoftPool2d`."""
    check_float(x, "softpool")
    return window_call(
        x,
        _soft,
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        ceil_mode=ceil_mode,
        output_size=output_size,
        dims=dims,
        dilation=dilation,
    )


class _SoftPoolNd(PoolNd):
    """Holds the window arguments; the public classes add docs only."""

    def forward(self, x: Tensor) -> Tensor:
        return soft_pool(x, **self.window_kwargs())


_DOC = r"""Applies {d}d SoftPool (Stergiou et al. 2021) over an input signal.

    .. math::
        y = \sum_{{i \in R}} \frac{{e^{{x_i}}}}{{\sum_{{j \in R}} e^{{x_j}}}} x_i

    over each window's real (non-padded) positions :math:`R`: an average that leans towards the
    window's largest values, and is differentiable everywhere. Overflow-safe: the weights are computed
    after subtracting each window's maximum.

    Args:
        kernel_size: the window size; give this or ``output_size``.
        stride: the window step. Default: ``kernel_size``.
        padding: implicit padding on both sides, excluded from the weights. Default: ``0``
        ceil_mode: use ceil instead of floor for the output size. Default: ``False``
        output_size: adaptive output size instead of ``kernel_size`` (keyword-only); ``None`` entries
            keep that size. ``output_size=1`` is global SoftPool. Default: ``None``
        dilation: the spacing between a kernel window's positions (keyword-only), as in
            :class:`torch.nn.MaxPool{d}d`. Default: ``1``

    The output size of each pooled dim is :math:`\lfloor (L_{{in}} + 2 \cdot padding - kernel\_size) /
    stride \rfloor + 1` (ceil with ``ceil_mode``), as for :class:`torch.nn.AvgPool{d}d`.

    Shape:
        - Input: {shape_in}
        - Output: {shape_out}

    Example::

        >>> import torch, poolcore
        >>> m = poolcore.nn.SoftPool{d}d(2)
        >>> x = torch.randn({x_shape}, requires_grad=True)
        >>> m(x).sum().backward()
        >>> x.grad is not None
        True
    """


def _doc(d: int) -> str:
    return _DOC.format(d=d, **DOC_SHAPES[d])


class SoftPool1d(_SoftPoolNd):
    __doc__ = _doc(1)
    dims = 1


class SoftPool2d(_SoftPoolNd):
    __doc__ = _doc(2)
    dims = 2


class SoftPool3d(_SoftPoolNd):
    __doc__ = _doc(3)
    dims = 3


def explain(case: WindowCase) -> Explanation:
    """The page's walk-through of one window: the weights, then the weighted average."""
    values = case.values
    weights = (values - values.max()).exp()
    total = float(weights.sum())
    weighted = float((weights * values).sum())
    shown = ", ".join(num(float(v)) for v in weights)
    return Explanation(
        [
            f"w = e^(a − max a) = [{shown}]",
            f"y = Σw·a / Σw = {num(weighted)} / {num(total)} = {num(weighted / total)}",
        ]
    )
