"""The one in-process entry point that both the HTTP route and the Gradio UI call, and the one limit on
how much torch work runs at once.

``run_pool`` is synchronous on purpose: callers run it in a worker thread, never on the event loop. Both
callers take a token of the app's ``anyio.CapacityLimiter`` (``app.state.limiter``, ``max_concurrency``
tokens) for their whole decode → pool → encode: the route through :func:`run_limited`, before its work
goes to one of the app's ``max_concurrency`` torch threads (``app.state.executor``); the UI, whose sync
handlers Gradio already runs in anyio worker threads, through :func:`hold_token` from inside that thread.
"""

from __future__ import annotations

import asyncio
import functools
import math
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import anyio
import anyio.from_thread
import torch
from torch import Tensor

import poolcore

from .errors import Unprocessable

__all__ = [
    "MAX_SEED",
    "PoolOutcome",
    "check_input",
    "hold_token",
    "poolcore_errors",
    "run_limited",
    "run_pool",
]

Mode = Literal["eval", "train"]
MAX_SEED = 2**63 - 1  # seeds are drawn from, and accepted in, [0, 2**63 - 1]
T = TypeVar("T")


@contextmanager
def poolcore_errors() -> Iterator[None]:
    """poolcore's ``ValueError``/``TypeError`` (bad parameters or input, with a message naming them) as a
    422; ``UnknownMethodError`` passes through (a 404). Only around calls into poolcore: a stray
    ``ValueError`` elsewhere is a bug, and stays a 500."""
    try:
        yield
    except poolcore.UnknownMethodError:
        raise
    except (ValueError, TypeError) as error:
        raise Unprocessable(str(error)) from None


async def run_limited(
    limiter: anyio.CapacityLimiter, executor: Executor, fn: Callable[..., T], *args: Any
) -> T:
    """``fn(*args)`` in one of ``executor``'s threads once ``limiter`` grants a token; waiting happens on
    the event loop, so queued requests hold no thread.

    A started thread cannot be stopped, so a cancelled caller keeps its token until the thread is done,
    then re-raises the cancellation: at most as many calls run as the limiter has tokens. A plain
    ``ThreadPoolExecutor`` costs the event loop less per request than anyio's worker pool (a C queue
    instead of a ``queue.Queue``, no per-call context copy); ``fn`` does not see the caller's context
    variables.
    """
    async with limiter:
        future = asyncio.get_running_loop().run_in_executor(executor, functools.partial(fn, *args))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            while not future.done():
                try:
                    await asyncio.wait([future])
                except asyncio.CancelledError:
                    continue  # cancelled again (anyio repeats it): still wait for the thread
            raise


@contextmanager
def hold_token(limiter: anyio.CapacityLimiter | None) -> Iterator[None]:
    """Hold one of ``limiter``'s tokens for the ``with`` body, from a synchronous caller running in an anyio
    worker thread of the loop that owns it (as Gradio runs sync handlers). ``None`` means no limit (an app
    whose lifespan has not run).

    Each call borrows on behalf of a fresh object: ``from_thread.run`` runs each step as a new task, so the
    borrower cannot be the task, and two holders in one thread count twice, as they should.
    """
    if limiter is None:
        yield
        return
    borrower = object()
    anyio.from_thread.run(limiter.acquire_on_behalf_of, borrower)
    try:
        yield
    finally:
        anyio.from_thread.run_sync(limiter.release_on_behalf_of, borrower)


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
        output = spec.run(x.to(device), resolved, training=training, generator=generator).cpu()
    elapsed_ms = (time.perf_counter() - start) * 1e3
    return PoolOutcome(
        output=output,
        method=spec.name,
        params={**resolved, "mode": mode, "seed": seed},
        device=str(device),
        elapsed_ms=elapsed_ms,
    )
