"""What the page's buttons do, free of Gradio: call ``run_pool`` in process and turn errors into the
service's own messages.

Everything here is synchronous on purpose: Gradio runs sync handlers in its thread pool, off the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import Tensor

import poolcore

from ..pooling import PoolOutcome, run_pool
from .controls import fields_of, window_forms
from .imaging import image_to_tensor, tensor_to_image

__all__ = [
    "ImageResult",
    "PageError",
    "Runtime",
    "compare_params",
    "guard",
    "matrix_values",
    "parse_matrix",
    "pool_image",
    "pool_tensor",
]

log = logging.getLogger("poolserve.ui")


class PageError(Exception):
    """An error to show in the page: the HTTP status the route would answer and the service's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def markdown(self) -> str:
        return f"**Error {self.status}**: {self.message}"


@dataclass(frozen=True)
class Runtime:
    """Where the page's torch work runs and what it may take, read from the app at call time (the
    lifespan sets the device; settings may be absent)."""

    device: Callable[[], torch.device | str]
    setting: Callable[[str], Any]

    @classmethod
    def of_state(cls, state: Any) -> Runtime:
        def device() -> torch.device | str:
            return getattr(state, "device", None) or "cpu"

        def setting(name: str) -> Any:
            return getattr(getattr(state, "settings", None), name, None)

        return cls(device=device, setting=setting)


def guard(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; the route's error mapping turns into a :class:`PageError`, never a traceback."""
    try:
        return fn()
    except PageError:
        raise
    except poolcore.UnknownMethodError as error:
        raise PageError(404, str(error)) from None
    except (ValueError, TypeError) as error:
        raise PageError(422, str(error)) from None
    except Exception as error:  # the route's error boundary: log it, show nothing internal
        log.exception("unexpected error in the UI")
        raise PageError(500, f"internal error ({type(error).__name__}); see the server log") from None


def _check_elements(runtime: Runtime, x: Tensor) -> None:
    limit = runtime.setting("max_elements")
    if limit is not None and x.numel() > limit:
        raise PageError(
            413, f"input has {x.numel()} elements (shape {tuple(x.shape)}), over the limit of {limit}"
        )


def pool_tensor(
    runtime: Runtime,
    x: Tensor,
    method: str,
    params: Mapping[str, Any],
    *,
    mode: str = "eval",
    seed: int | None = None,
) -> PoolOutcome:
    """``run_pool`` on the app's device, with the service's limits and error messages."""
    _check_elements(runtime, x)
    return guard(lambda: run_pool(x, method, params, mode=mode, seed=seed, device=runtime.device()))  # type: ignore[arg-type]


@dataclass(frozen=True)
class ImageResult:
    image: Image.Image
    input_shape: tuple[int, ...]
    outcome: PoolOutcome


def pool_image(
    runtime: Runtime,
    image: Image.Image | None,
    method: str,
    params: Mapping[str, Any],
    *,
    mode: str = "eval",
    seed: int | None = None,
) -> ImageResult:
    """Pool an image as the route does (C×H×W in [0, 1]) and return the pooled image at its true size."""
    if image is None:
        raise PageError(400, "no image: upload one or pick an example")
    limit = runtime.setting("max_image_pixels")
    if limit is not None and image.width * image.height > limit:
        raise PageError(
            413, f"image has {image.width}×{image.height} pixels, over the limit of {limit} pixels"
        )
    x = image_to_tensor(image)
    outcome = pool_tensor(runtime, x, method, params, mode=mode, seed=seed)
    return ImageResult(tensor_to_image(outcome.output), tuple(x.shape), outcome)


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
