"""Shared fixtures: device and dtype as parameters, with per-dtype tolerances (kornia's pattern)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

CUDA = torch.cuda.is_available()

# (rtol, atol) per dtype for comparisons against an independent reference.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    rtol, atol = TOLERANCES[dtype]
    return {"rtol": rtol, "atol": atol}


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request: pytest.FixtureRequest) -> torch.device:
    if request.param == "cuda" and not CUDA:
        pytest.skip("no CUDA device on this machine")
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["fp32", "fp64"])
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return request.param


@pytest.fixture(
    params=[torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=["fp16", "bf16", "fp32", "fp64"]
)
def any_dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return request.param
