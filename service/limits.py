"""What one request may make the operator allocate: its output, and its working memory.

Both are worked out from the request's shape and window before anything is allocated, with poolcore's own
window geometry (:func:`poolcore.windows.make_window`), so a 2×2 input can't ask for a 20000×20000 output
and a request can't make poolcore build gigabytes of per-window tensors. The costs are the registry's
(``MethodSpec.visit_cost`` and ``MethodSpec.scratch``), so no method is named here. Over either limit the
answer is 413, naming the limit.

The answer is bounded the same way: :func:`check_response` works out, from the output's shape and dtype
and the encoding asked for, how large the answer can be before anything is encoded (exactly for .npy and
raw tensor bytes, an upper bound for JSON and PNG), and refuses one over ``max_response_bytes`` with 413.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson
import torch
from numpy.lib import format as npformat

from poolcore.registry import MethodSpec
from poolcore.windows import Window, infer_dims, make_window

from .codecs import json as json_codec
from .config import Settings
from .errors import PayloadTooLarge

__all__ = [
    "DEFAULT_LIMITS",
    "RESPONSE_FRAMING",
    "Encoding",
    "WorkLimits",
    "check_response",
    "check_work",
    "output_window",
    "response_bytes",
    "window_visits",
]

_DEFAULTS = Settings.model_fields


@dataclass(frozen=True)
class WorkLimits:
    """``max_elements``: the largest output (the same limit as the input's); ``max_scratch_elements``:
    the most working memory beyond input and output, in 4-byte units (each method's ``MethodSpec.scratch``);
    ``max_work``: the most window visits (see :func:`window_visits`); ``max_response_bytes``: the largest
    answer (see :func:`check_response`). The defaults are the service's."""

    max_elements: int = _DEFAULTS["max_elements"].default
    max_scratch_elements: int = _DEFAULTS["max_scratch_elements"].default
    max_work: int = _DEFAULTS["max_work"].default
    max_response_bytes: int = _DEFAULTS["max_response_bytes"].default

    @classmethod
    def of(cls, settings: Any) -> WorkLimits:
        """From a :class:`~service.config.Settings` (or anything with those attributes)."""
        return cls.lookup(lambda name: getattr(settings, name, None))

    @classmethod
    def lookup(cls, setting: Callable[[str], Any]) -> WorkLimits:
        """From ``setting(name)``; a limit it gives None for keeps the service's default."""
        names = ("max_elements", "max_scratch_elements", "max_work", "max_response_bytes")
        values = {name: setting(name) for name in names}
        return cls(**{name: int(value) for name, value in values.items() if value is not None})


DEFAULT_LIMITS = WorkLimits()


def output_window(shape: tuple[int, ...], resolved: Mapping[str, Any]) -> tuple[int, Window] | None:
    """The planes and the window poolcore will use for an input of ``shape`` (the steps of
    :func:`poolcore.windows.window_call`, without touching a tensor), or None where the geometry is
    invalid: the operator then raises its own error, with its own message."""
    try:
        dims = infer_dims(
            len(shape), resolved.get("kernel_size"), resolved.get("output_size"), resolved.get("dims")
        )
        lead = len(shape) - dims
        if lead not in (0, 1, 2) or 0 in shape:
            return None
        batched = (1,) * (2 - lead) + tuple(shape)
        spatial = batched[2:] if dims > 1 else (1, *batched[2:])
        window = make_window(
            spatial,
            dims,
            resolved.get("kernel_size"),
            resolved.get("stride"),
            resolved.get("padding", 0),
            resolved.get("ceil_mode", False),
            resolved.get("output_size"),
            resolved.get("dilation", 1),
        )
    except (ValueError, TypeError):
        return None
    return batched[0] * batched[1], window


def check_work(
    spec: MethodSpec,
    resolved: Mapping[str, Any],
    shape: tuple[int, ...],
    dtype: torch.dtype,
    training: bool,
    device: torch.device,
    limits: WorkLimits,
) -> None:
    """413 for a request whose output, or whose working memory, would be over ``limits``; nothing is
    allocated to find out."""
    found = output_window(shape, resolved)
    if found is None:
        return
    planes, window = found
    count = planes * math.prod(window.out_size)
    if count > limits.max_elements:
        raise PayloadTooLarge(
            f"the output would have {count} elements (output size {_spatial(window, resolved, shape)} for "
            f"input shape {tuple(shape)}), over the limit of {limits.max_elements}"
        )
    visits = window_visits(spec, planes, window)
    if visits > limits.max_work:
        cost = f", × {spec.visit_cost} for {spec.base or spec.name}" if spec.visit_cost != 1 else ""
        raise PayloadTooLarge(
            f"this request would cost {visits} window visits (output elements × window elements{cost}), "
            f"over the limit of {limits.max_work} (POOLSERVE_MAX_WORK); use a larger stride or a smaller "
            "window or input"
        )
    scratch = spec.scratch(planes, window, dtype, training) if spec.scratch is not None else 0
    if scratch > limits.max_scratch_elements:
        raise PayloadTooLarge(
            f"{spec.base or spec.name}{' training' if training else ''} with this window needs about "
            f"{scratch} elements of working memory, over the limit of {limits.max_scratch_elements} "
            "(POOLSERVE_MAX_SCRATCH_ELEMENTS); use a smaller window or input"
        )


def window_visits(spec: MethodSpec, planes: int, window: Window) -> int:
    """How many input elements the operator reads, counted per output element: output elements × the
    largest window (a cost model of the work, not of memory), × the method's ``visit_cost`` (20 for the
    power means, which may rescale every window when the plain form overflows: measured 92.7 s against
    4.1 s for kernel 64, stride 1 on 3×512²)."""
    per_window = math.prod(window.max_extent(d) for d in range(len(window.in_size)))
    return planes * math.prod(window.out_size) * per_window * spec.visit_cost


def _spatial(window: Window, resolved: Mapping[str, Any], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The pooled dims' output sizes as the caller counts them (a 1d pool's lifted height dropped)."""
    dims = infer_dims(
        len(shape), resolved.get("kernel_size"), resolved.get("output_size"), resolved.get("dims")
    )
    return tuple(window.out_size[len(window.out_size) - dims :])


# How an answer carries the output: JSON numbers (/pool's nested lists; the Open Inference Protocol's flat
# list is "json_flat"), .npy, PNG, or the tensor's raw bytes (the protocol's binary extension and gRPC).
Encoding = Literal["json", "json_flat", "npy", "png", "raw"]
_NAMES: dict[str, str] = {
    "json": "JSON",
    "json_flat": "JSON",
    "npy": ".npy",
    "png": "PNG",
    "raw": "raw tensor bytes",
}


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype an output of ``dtype`` is written as (bfloat16 as float32, as the .npy codec does)."""
    return torch.empty(0, dtype=torch.float32 if dtype == torch.bfloat16 else dtype).numpy().dtype


def _png_bound(shape: tuple[int, ...]) -> int | None:
    """An upper bound on the PNG the image codec writes for an output of ``shape`` (8 bits per sample,
    deflate at level 1), or None where the output is no image (the codec then refuses it with 406)."""
    dims = list(shape)
    while len(dims) > 3 and dims[0] == 1:
        dims.pop(0)
    if len(dims) == 2:
        dims.insert(0, 1)
    if len(dims) != 3 or dims[0] not in (1, 3, 4):
        return None
    channels, height, width = dims
    raw = height * (1 + width * channels)  # a filter byte per row
    # zlib's deflateBound (stored blocks at worst) with its wrapper; PNG's signature, IHDR and IEND; 12
    # bytes per IDAT chunk, of which Pillow writes one per 64 KiB at most, counted per 4 KiB to be safe.
    deflated = raw + (raw >> 12) + (raw >> 14) + (raw >> 25) + 13 + 6
    return deflated + 8 + 25 + 12 + 12 * (deflated // 4096 + 1)


def response_bytes(
    shape: tuple[int, ...], dtype: torch.dtype, encoding: Encoding, rest: dict[str, Any] | None = None
) -> int | None:
    """The bytes of an answer carrying an output of ``shape`` and ``dtype`` in ``encoding``, worked out
    without encoding it: exact for .npy and raw bytes, an upper bound for JSON (``rest``: the document
    besides the numbers) and PNG. None where ``encoding`` can't carry the output (PNG of a non-image)."""
    if encoding in ("json", "json_flat"):
        return json_codec.size_bound(shape, dtype, nested=encoding == "json", rest=rest)
    if encoding == "png":
        return _png_bound(shape)
    numpy_dtype = _numpy_dtype(dtype)
    data = math.prod(shape) * numpy_dtype.itemsize
    if encoding == "raw":  # beside a JSON header (the protocol's binary extension) or a message's fields
        return data + (len(orjson.dumps(rest)) if rest is not None else 0)
    header = io.BytesIO()
    descr = {"descr": npformat.dtype_to_descr(numpy_dtype), "fortran_order": False, "shape": tuple(shape)}
    npformat.write_array_header_1_0(header, descr)
    return len(header.getvalue()) + data


# Bytes an Open Inference Protocol answer holds besides the tensor, its id and its parameters (model name
# and version, the output's name, datatype and shape, and the keys or protobuf tags around them) at most.
RESPONSE_FRAMING = 512


def check_response(
    output: torch.Tensor,
    encoding: Encoding,
    limits: WorkLimits,
    rest: dict[str, Any] | None = None,
    overhead: int = 0,
) -> None:
    """413 for an answer that would be over ``limits.max_response_bytes``, before it is encoded;
    ``overhead``: bytes the answer carries besides the output and ``rest`` (a protocol's framing)."""
    shape, limit = tuple(output.shape), limits.max_response_bytes
    size = response_bytes(shape, output.dtype, encoding, rest)
    if size is None or size + overhead <= limit:
        return
    advice = "pool with a larger window or smaller output_size"
    if encoding != "npy" and encoding != "raw":
        advice = "ask for .npy (Accept: application/x-npy) or " + advice
    raise PayloadTooLarge(
        f"the answer would be up to {size + overhead} bytes of {_NAMES[encoding]} (output shape {shape}, "
        f"{str(output.dtype).removeprefix('torch.')}), over the limit of {limit} bytes "
        f"(POOLSERVE_MAX_RESPONSE_BYTES); {advice}"
    )
