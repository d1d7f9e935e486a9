"""The one in-process entry point that both the HTTP route and the Gradio UI call.

Synchronous on purpose: callers run it in a worker thread, never on the event loop.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

import poolcore

__all__ = ["PoolOutcome", "run_pool"]

Mode = Literal["eval", "train"]


@dataclass(frozen=True)
class PoolOutcome:
    output: Tensor  # on the CPU
    method: str
    params: dict[str, Any]  # resolved: defaults filled in, presets applied, plus mode and seed
    device: str
    elapsed_ms: float


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

    Raises ``poolcore.UnknownMethodError`` for an unknown name and ``ValueError``/``TypeError`` for bad
    parameters or input, each with a message naming the problem.
    """
    if mode not in ("eval", "train"):
        raise ValueError(f"mode must be 'eval' or 'train' (got {mode!r})")
    spec = poolcore.get_spec(method)
    resolved = spec.resolve(params)
    training = mode == "train"
    generator = None
    if training and spec.random:
        seed = secrets.randbits(63) if seed is None else int(seed)
        generator = torch.Generator(device=torch.device(device)).manual_seed(seed)
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
