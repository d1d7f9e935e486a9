"""Shared fixtures: device and dtype as parameters, with per-dtype tolerances (kornia's pattern)."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
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


def tolerance(dtype: torch.dtype) -> dict[str, Any]:  # Any: mypy checks ** unpacking per key
    rtol, atol = TOLERANCES[dtype]
    return {"rtol": rtol, "atol": atol}


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same random state (torch, CUDA included; numpy; random), so a test that
    draws without its own generator is reproducible too."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


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
