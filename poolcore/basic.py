"""Average and max pooling in every window form, on the shared window geometry.

These are torch's own kernels; what poolcore adds is one entry point for kernel, adaptive and global
windows in 1d/2d/3d, so the registry can offer ``avg`` and ``max`` beside the other methods.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from ._module import keep_memory_format
from .params import WindowParams
from .windows import IntTuple, OptIntTuple, check_float, window_call

__all__ = ["AvgParams", "MaxParams", "avg_pool", "max_pool"]


class AvgParams(WindowParams):
    count_include_pad: bool = Field(
        True, description="Count the zero padding in each window's mean, as torch's avg_pool does."
    )


class MaxParams(WindowParams):
    pass


def avg_pool(
    x: Tensor,
    kernel_size: IntTuple | None = None,
    stride: IntTuple | None = None,
    padding: IntTuple = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    *,
    output_size: OptIntTuple = None,
    dims: int | None = None,
    dilation: IntTuple = 1,
) -> Tensor:
    """Average pooling; ``kernel_size`` windows as ``F.avg_pool2d``, ``output_size`` as adaptive."""
    check_float(x, "avg")
    out = window_call(
        x,
        lambda b, w: w.mean(b, count_include_pad=count_include_pad),
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        ceil_mode=ceil_mode,
        output_size=output_size,
        dims=dims,
        dilation=dilation,
    )
    return keep_memory_format(x, out)


def max_pool(
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
    """Max pooling; ``kernel_size`` windows as ``F.max_pool2d``, ``output_size`` as adaptive."""
    check_float(x, "max")
    out = window_call(
        x,
        lambda b, w: w.max(b),
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        ceil_mode=ceil_mode,
        output_size=output_size,
        dims=dims,
        dilation=dilation,
    )
    return keep_memory_format(x, out)
