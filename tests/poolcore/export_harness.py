"""A shared harness for the deployment paths of a pooling module: ``torch.export`` with dynamic batch and
spatial sizes, ONNX export (dynamo and legacy exporters) run in onnxruntime, and
``torch.compile(fullgraph=True, dynamic=True)``.

Every check compares against the module's own eager output on the export shape *and* on other shapes, so a
graph that baked in the example's size, or that ignores its input, fails.
``tests/poolcore/test_stochastic_deploy.py``
runs torch's own ``nn.AvgPool2d`` through it as a control row.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from torch import nn
from torch.export import Dim

__all__ = [
    "EVAL_TOLERANCE",
    "compile_full",
    "dynamic_shapes",
    "export_dynamic",
    "onnx_outputs",
    "other_shapes",
]

# The bar for exported graphs against eager (float32).
EVAL_TOLERANCE: dict[str, Any] = {"rtol": 1e-4, "atol": 1e-5}  # Any: mypy checks ** per key


def dynamic_shapes(x: torch.Tensor, min_size: int = 4) -> tuple[dict[int, Dim], ...]:
    """Batch (dim 0) and every spatial dim (2 and on) dynamic; channels static. ``min_size`` bounds the
    spatial dims from below."""
    names = ["d", "h", "w"][-(x.dim() - 2) :]
    dims: dict[int, Dim] = {0: Dim("batch", min=1, max=1024)}
    for i, name in zip(range(2, x.dim()), names, strict=True):
        dims[i] = Dim(name, min=min_size, max=4096)
    return (dims,)


def other_shapes(x: torch.Tensor, grow: Sequence[int] = (3, 1)) -> list[torch.Tensor]:
    """Inputs of other batch and spatial sizes (same channels), non-negative as after a ReLU."""
    gen = torch.Generator().manual_seed(1234)
    out = []
    for g in grow:
        shape = (x.shape[0] + g, x.shape[1], *[s + g for s in x.shape[2:]])
        out.append(torch.rand(shape, generator=gen, dtype=x.dtype))
    return out


def export_dynamic(module: nn.Module, x: torch.Tensor, min_size: int = 4) -> torch.export.ExportedProgram:
    return torch.export.export(module, (x,), dynamic_shapes=dynamic_shapes(x, min_size))


def compile_full(module: nn.Module) -> nn.Module:
    torch._dynamo.reset()  # a fresh cache per module: each test sees its own graph breaks and guards
    return torch.compile(module, fullgraph=True, dynamic=True)  # type: ignore[return-value]


def onnx_outputs(
    module: nn.Module, x: torch.Tensor, inputs: Sequence[torch.Tensor], *, dynamo: bool, min_size: int = 4
) -> list[torch.Tensor]:
    """Export ``module`` (eval mode) to ONNX with dynamic batch and spatial dims, run it in onnxruntime on
    each of ``inputs`` and return the outputs. Skips when onnx/onnxruntime are missing."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    buffer = io.BytesIO()
    if dynamo:
        program = torch.onnx.export(
            module, (x,), dynamo=True, dynamic_shapes=dynamic_shapes(x, min_size), verbose=False
        )
        assert program is not None
        program.save(buffer)  # type: ignore[arg-type]
    else:
        axes = {i: f"d{i}" for i in [0, *range(2, x.dim())]}
        torch.onnx.export(
            module,
            (x,),
            buffer,  # type: ignore[arg-type]  # a file object works; the stub says path only
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": axes, "y": axes},
        )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [torch.from_numpy(session.run(None, {name: t.numpy()})[0]) for t in inputs]
