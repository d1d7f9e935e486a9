"""The one in-process entry point that both the HTTP route and the Gradio UI call.

Synchronous on purpose: callers run it in a worker thread, never on the event loop.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

import poolcore

__all__ = ["MAX_SEED", "PoolOutcome", "check_input", "run_pool"]

Mode = Literal["eval", "train"]
MAX_SEED = 2**63 - 1  # seeds are drawn from, and accepted in, [0, 2**63 - 1]


@dataclass(frozen=True)
class PoolOutcome:
    output: Tensor  # on the CPU; made under inference_mode, so clone() it before editing in place
    method: str
    params: dict[str, Any]  # resolved: defaults filled in, presets applied, plus mode and seed
    device: str
    elapsed_ms: float


def check_input(x: Tensor) -> None:
    """What every method needs of its input: a real floating tensor of rank 1 to 5, all finite."""
    if not isinstance(x, Tensor):
        raise TypeError(f"input must be a torch.Tensor (got {type(x).__name__})")
    if not 1 <= x.dim() <= 5:
        raise ValueError(f"input must have rank 1 to 5 (got rank {x.dim()}, shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise ValueError(f"input must be a real floating-point tensor (got dtype {x.dtype})")
    if x.numel() == 0:
        return  # the operator names the empty dimension
    # One min/max pass (NaN propagates, ±inf shows) instead of materialising isfinite's mask.
    low, high = (float(v) for v in torch.aminmax(x))
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"input must be finite ({bad} values are NaN or infinite)")


def run_pool(
    x: Tensor,
    method: str,
    params: Mapping[str, Any] | None = None,
    *,
    mode: Mode = "eval",
    seed: int | None = None,
    device: torch.device | str = "cpu",
) -> PoolOutcome:
    """Validate, move to ``device``, pool under ``inference_mode`` and bring the result back to the CPU.

    In train mode a random method uses ``seed``, or a freshly drawn one, and reports it in
    ``params["seed"]``: the same call with that seed gives the same output on the same device.

    Raises ``poolcore.UnknownMethodError`` for an unknown name and ``ValueError``/``TypeError`` for bad
    parameters or input, each with a message naming the problem.
    """
    if mode not in ("eval", "train"):
        raise ValueError(f"mode must be 'eval' or 'train' (got {mode!r})")
    bad_seed = isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED
    if seed is not None and bad_seed:
        raise ValueError(f"seed must be an integer from 0 to 2**63-1 (got {seed!r})")
    spec = poolcore.get_spec(method)
    resolved = spec.resolve(params)
    check_input(x)
    device = torch.device(device)
    training = mode == "train"
    generator = None
    if training and spec.random:
        seed = secrets.randbelow(MAX_SEED + 1) if seed is None else seed
        generator = torch.Generator(device=device).manual_seed(seed)
    else:
        seed = None
    start = time.perf_counter()
    with torch.inference_mode():
        output = spec(x.to(device), params, training=training, generator=generator).cpu()
    elapsed_ms = (time.perf_counter() - start) * 1e3
    return PoolOutcome(
        output=output,
        method=spec.name,
        params={**resolved, "mode": mode, "seed": seed},
        device=str(device),
        elapsed_ms=elapsed_ms,
    )
