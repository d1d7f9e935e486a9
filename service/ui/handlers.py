"""What the page's buttons do, free of Gradio: call ``run_pool`` in process and turn errors into the
service's own messages.

Everything here is synchronous on purpose: Gradio runs sync handlers in anyio worker threads, off the event
loop, and from there hand their torch work to the same worker threads as the route
(:meth:`service.workers.TorchWorkers.call`), so page and route share one concurrency limit. Images go
through the service's own image codec, limits included.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from PIL import Image
from torch import Tensor

import poolcore

from ..codecs import Limits
from ..codecs import image as image_codec
from ..codecs.base import check_elements
from ..config import Settings
from ..errors import ServiceError, clip_detail, describe
from ..limits import WorkLimits
from ..pooling import PoolOutcome, poolcore_errors, run_pool
from ..workers import TorchWorkers
from .controls import fields_of, window_forms

__all__ = [
    "ImageResult",
    "PageError",
    "Runtime",
    "compare_params",
    "guard",
    "matrix_values",
    "parse_matrix",
    "plane_params",
    "pool_image",
    "pool_tensor",
]

T = TypeVar("T")

log = logging.getLogger("poolserve.ui")


class PageError(Exception):
    """An error to show in the page: the HTTP status the route would answer and the service's message."""

    def __init__(self, status: int, message: str) -> None:
        message = clip_detail(message, reserve=64)  # under 4 KiB with markdown()'s "**Error 422**: "
        super().__init__(message)
        self.status = status
        self.message = message

    def markdown(self) -> str:
        return f"**Error {self.status}**: {self.message}"


@dataclass(frozen=True)
class Runtime:
    """Where the page's torch work runs, what it may take and how many run at once, read from the app at
    call time (the lifespan sets the device and the worker threads; settings may be absent)."""

    device: Callable[[], torch.device | str]
    setting: Callable[[str], Any]
    workers: Callable[[], TorchWorkers | None] = lambda: None

    @classmethod
    def of_state(cls, state: Any) -> Runtime:
        def device() -> torch.device | str:
            return getattr(state, "device", None) or "cpu"

        def setting(name: str) -> Any:
            return getattr(getattr(state, "settings", None), name, None)

        def workers() -> TorchWorkers | None:
            return getattr(state, "workers", None)

        return cls(device=device, setting=setting, workers=workers)

    def limits(self) -> Limits:
        """The codecs' limits from the settings; one that is absent takes the service's default."""

        def value(name: str) -> int:
            given = self.setting(name)
            return int(Settings.model_fields[name].default if given is None else given)

        return Limits(value("max_elements"), value("max_image_pixels"), value("max_jpeg_scans"))

    def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` (torch work) in one of the route's worker threads, under the route's concurrency limit;
        in this thread where there are none (an app whose lifespan has not run)."""
        workers = self.workers()
        try:
            return fn() if workers is None else workers.call(fn)
        except ServiceError as error:  # the workers' own: queue full, queued too long, shutting down
            raise PageError(error.status_code, error.detail) from None


def guard(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` (page code that calls into poolcore or the codecs); a failure becomes a
    :class:`PageError` through the service's one error table (:func:`service.errors.describe`): the
    client's mistakes with their message, anything else a logged 500 that shows nothing internal."""
    try:
        with poolcore_errors():
            return fn()
    except PageError:
        raise
    except Exception as error:
        problem = describe(error)
        if problem.status == 500:
            raise PageError(500, "internal error; see the server log") from None
        raise PageError(problem.status, problem.message) from None


def _pool(
    runtime: Runtime, x: Tensor, method: str, params: Mapping[str, Any], mode: str, seed: int | None
) -> PoolOutcome:
    def run() -> PoolOutcome:
        check_elements(tuple(x.shape), runtime.limits())
        limits = WorkLimits.lookup(runtime.setting)  # output size and working memory
        return run_pool(x, method, params, mode=mode, seed=seed, device=runtime.device(), limits=limits)  # type: ignore[arg-type]

    return guard(run)


def plane_params(method: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with ``dims=2`` where the method takes it: the page pools (C, H, W) images and (1, H, W)
    matrices in 2d, as the route pools an image body (a rank-3 input is ambiguous without it)."""
    out = dict(params)
    spec = guard(lambda: poolcore.get_spec(method))
    if "dims" in spec.params.model_fields:
        out.setdefault("dims", 2)
    return out


def pool_tensor(
    runtime: Runtime,
    x: Tensor,
    method: str,
    params: Mapping[str, Any],
    *,
    mode: str = "eval",
    seed: int | None = None,
) -> PoolOutcome:
    """``run_pool`` on the app's device, with the service's limits, concurrency limit and error messages."""
    return runtime.run(lambda: _pool(runtime, x, method, params, mode, seed))


@dataclass(frozen=True)
class ImageResult:
    image: Image.Image
    input_shape: tuple[int, ...]
    outcome: PoolOutcome


def pool_image(
    runtime: Runtime,
    image: str | Path | bytes | None,
    method: str,
    params: Mapping[str, Any],
    *,
    mode: str = "eval",
    seed: int | None = None,
) -> ImageResult:
    """Pool an image file (a path, as Gradio hands uploads over, or its bytes) as the route pools an image
    body: the service's image codec decodes it (limits and decompression-bomb check included) and makes
    the pooled image, returned at its true size."""
    if image is None:
        raise PageError(400, "no image: upload one or pick an example")
    body = image if isinstance(image, bytes) else guard(lambda: Path(image).read_bytes())

    def work() -> ImageResult:
        x: Tensor = guard(lambda: image_codec.decode(body, runtime.limits()))
        outcome = _pool(runtime, x, method, plane_params(method, params), mode, seed)
        pooled: Image.Image = guard(lambda: image_codec.to_image(outcome.output))
        return ImageResult(pooled, tuple(x.shape), outcome)

    return runtime.run(work)


def compare_params(method: str, kernel_size: Any, output_size: Any) -> dict[str, Any]:
    """One shared window for every method: the sliding window where a method takes one, else the adaptive
    output size, else nothing (global presets)."""
    forms = window_forms(method)
    names = {f.name for f in fields_of(method)}
    if "kernel" in forms and kernel_size is not None:
        return {"kernel_size": kernel_size}
    if "adaptive" in forms and output_size is not None and "output_size" in names:
        return {"output_size": output_size}
    return {}


def matrix_values(rows: Sequence[Sequence[Any]] | Any) -> list[list[float]]:
    """The tensor tab's table as rows of floats; blank or non-numeric cells name themselves."""
    if hasattr(rows, "values") and hasattr(rows, "columns"):  # a pandas DataFrame
        rows = rows.values.tolist()
    rows = [list(r) for r in rows if any(str(v).strip() for v in r)]
    if not rows or not rows[0]:
        raise PageError(422, "the matrix is empty: enter at least one number")
    out: list[list[float]] = []
    for i, row in enumerate(rows):
        parsed = []
        for j, value in enumerate(row):
            try:
                parsed.append(float(value))
            except (TypeError, ValueError):
                raise PageError(422, f"matrix entry [{i}, {j}] is not a number (got {value!r})") from None
        out.append(parsed)
    if len({len(r) for r in out}) != 1:
        raise PageError(422, "every row of the matrix must have the same length")
    return out


def parse_matrix(rows: Sequence[Sequence[Any]] | Any) -> Tensor:
    """The tensor tab's table as a float32 H×W tensor (the JSON codec's default dtype)."""
    x = torch.tensor(matrix_values(rows), dtype=torch.float32)
    if not torch.isfinite(x).all():
        raise PageError(422, "the matrix holds NaN or Inf; every entry must be finite")
    return x
