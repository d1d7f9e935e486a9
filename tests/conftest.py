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

# Under pytest-xdist (`make test` runs two workers) each worker is a process of its own and takes its share
# of the cores: two workers with torch's default of one intra-op thread per core would oversubscribe them.
# Each also compiles in-process: inductor's pool of compile processes would add processes, not cores, and
# each of them imports torch. An explicit choice in the environment still wins.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    import torch._inductor.config

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, torch.get_num_threads() // WORKERS))
    if "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ:
        torch._inductor.config.compile_threads = 1

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
