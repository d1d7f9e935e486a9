"""The shared module base: holds the window arguments and prints them, as torch's ``_MaxPoolNd`` does."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .windows import IntTuple, OptIntTuple, make_window

__all__ = ["DOC_SHAPES", "PoolNd", "keep_memory_format"]


def _size_rule(names: tuple[str, ...]) -> str:
    dims = ", ".join(f"{n}_out" for n in names)
    lines = [
        f"          where each of {dims} is, for kernel windows (dimension :math:`d`),",
        "",
        "          .. math::",
        r"              X_{out} = \left\lfloor \frac{X_{in} + 2 \cdot \text{padding}[d]"
        r" - \text{kernel\_size}[d]}{\text{stride}[d]} \right\rfloor + 1",
        "",
        "          (the ceiling with ``ceil_mode``, as long as the last window starts inside the input",
        "          or its left padding); with ``output_size``, ``output_size[d]`` (a ``None`` entry keeps",
        "          the input's).",
    ]
    return "\n".join(lines)


# Docstring fields of the 1d/2d/3d modules, shared by every family: input and output shapes, and the shape
# of the example input.
DOC_SHAPES: dict[int, dict[str, str]] = {
    1: {
        "shape_in": "(N, C, L_in) or (C, L_in)",
        "shape_out": "(N, C, L_out) or (C, L_out)",
        "size_rule": _size_rule(("L",)),
        "x_shape": "2, 8, 20",
    },
    2: {
        "shape_in": "(N, C, H_in, W_in) or (C, H_in, W_in)",
        "shape_out": "(N, C, H_out, W_out) or (C, H_out, W_out)",
        "size_rule": _size_rule(("H", "W")),
        "x_shape": "2, 8, 16, 16",
    },
    3: {
        "shape_in": "(N, C, D_in, H_in, W_in) or (C, D_in, H_in, W_in)",
        "shape_out": "(N, C, D_out, H_out, W_out) or (C, D_out, H_out, W_out)",
        "size_rule": _size_rule(("D", "H", "W")),
        "x_shape": "2, 4, 8, 8, 8",
    },
}


def keep_memory_format(x: Tensor, out: Tensor) -> Tensor:
    """``out`` in ``x``'s memory format where ``x`` is a batched ``channels_last`` (4-d) or
    ``channels_last_3d`` (5-d) tensor, as torch's own pools return it; otherwise ``out`` as it is. A
    copy only where the computation lost the format (a no-op where it kept it). Not under export or
    tracing, where an exported graph's layout is the exporter's to choose."""
    if torch.compiler.is_exporting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return out
    for rank, memory_format in ((4, torch.channels_last), (5, torch.channels_last_3d)):
        if (
            x.dim() == out.dim() == rank
            and not x.is_contiguous()
            and x.is_contiguous(memory_format=memory_format)
        ):
            return out.contiguous(memory_format=memory_format)
    return out


class PoolNd(nn.Module):
    """Base of every poolcore module: ``kernel_size``/``stride``/``padding``/``ceil_mode`` or
    ``output_size``. Subclasses set ``dims`` and implement ``forward``."""

    dims: ClassVar[int | None] = None

    def __init__(
        self,
        kernel_size: IntTuple | None = None,
        stride: IntTuple | None = None,
        padding: IntTuple = 0,
        ceil_mode: bool = False,
        *,
        output_size: OptIntTuple = None,
        dilation: IntTuple = 1,
    ) -> None:
        super().__init__()
        if self.dims is not None:
            # Validate eagerly against a nominal input so a bad module fails at construction, not in forward.
            spatial = [1, 10**6] if self.dims == 1 else [10**6] * self.dims
            make_window(spatial, self.dims, kernel_size, stride, padding, ceil_mode, output_size, dilation)
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.ceil_mode = ceil_mode
        self.output_size = output_size
        self.dilation = dilation

    def window_kwargs(self) -> dict[str, Any]:
        return {
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "padding": self.padding,
            "ceil_mode": self.ceil_mode,
            "output_size": self.output_size,
            "dims": self.dims,
            "dilation": self.dilation,
        }

    def extra_repr(self) -> str:
        if self.output_size is not None:
            return f"output_size={self.output_size}"
        dilation = "" if self.dilation == 1 else f", dilation={self.dilation}"
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}{dilation}, "
            f"ceil_mode={self.ceil_mode}"
        )
