"""JSON: ``{"data": <nested list, rank 1-5>, "params": {...}, "dtype": "float32"}`` in, the same out.

The tensor is parsed by orjson and numpy (a C loop over the nested lists), not a pydantic list model,
which is far slower on images.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
import torch
from starlette.responses import Response
from torch import Tensor

from ..errors import BadRequest, Unprocessable, shorten
from .base import Decoded, Limits, check_elements

__all__ = ["DTYPES", "decode", "encode", "header", "number_bytes", "size_bound"]

DTYPES: dict[str, np.dtype] = {
    "float16": np.dtype(np.float16),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
}
_KEYS = ("data", "params", "dtype")


# What a body sent as JSON may really be, by its first bytes: named in the error, with the type to send.
_MAGIC = (
    (b"\x93NUMPY", ".npy", "application/x-npy"),
    (b"\x89PNG", "a PNG image", "image/png"),
    (b"\xff\xd8\xff", "a JPEG image", "image/jpeg"),
)


def _looks_like(body: bytes | bytearray) -> str:
    for magic, what, media_type in _MAGIC:
        if bytes(body[: len(magic)]) == magic:
            return f"; the body looks like {what}: send it with Content-Type: {media_type}"
    return ""


def decode(body: bytes | bytearray, limits: Limits) -> Decoded:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        hint = _looks_like(body)
        raise BadRequest(f"malformed JSON: {error}{hint}") from None
    # numpy takes true/false next to numbers as 1/0; look for them only when the text has any.
    if _mentions_booleans(body) and isinstance(doc, dict) and _has_booleans(doc.get("data")):
        raise Unprocessable("data must hold only numbers (got booleans)")
    if not isinstance(doc, dict):
        raise Unprocessable(
            f'the JSON body must be an object {{"data": [...], "params": {{...}}}} (got {type(doc).__name__})'
        )
    unknown = sorted(set(doc) - set(_KEYS))
    if unknown:
        raise Unprocessable(
            f"unknown key(s) in the JSON body: {shorten(', '.join(unknown))}; allowed: {', '.join(_KEYS)}"
        )
    if "data" not in doc:
        raise Unprocessable('the JSON body has no "data" (a nested list of numbers, rank 1 to 5)')
    params = doc.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise Unprocessable(f'"params" must be an object (got {type(params).__name__})')
    dtype_name = doc.get("dtype")
    if dtype_name is None:
        dtype_name = "float32"
    if not isinstance(dtype_name, str) or dtype_name not in DTYPES:  # a list or object is no dict key
        raise Unprocessable(f'"dtype" must be one of {", ".join(DTYPES)} (got {shorten(dtype_name)})')
    return Decoded(to_tensor(doc["data"], DTYPES[dtype_name], limits), "json", params)


def to_tensor(data: Any, dtype: np.dtype, limits: Limits) -> Tensor:
    """Nested lists of numbers to a tensor, refusing ragged, non-numeric and out-of-rank data."""
    try:
        array = np.asarray(data)
    except (ValueError, TypeError) as error:
        raise Unprocessable(
            f"data is ragged: every list at one depth must have the same length ({error})"
        ) from None
    if array.dtype.kind == "O":
        raise Unprocessable(
            "data must hold only numbers in equal-length lists (got null, objects or ragged lists)"
        )
    if array.dtype.kind not in "iuf":
        raise Unprocessable(f"data must hold only numbers (got {_kind_name(array.dtype)})")
    if not 1 <= array.ndim <= 5:
        raise Unprocessable(f"data must have rank 1 to 5 (got rank {array.ndim}, shape {array.shape})")
    check_elements(array.shape, limits)
    with np.errstate(over="ignore"):  # overflow to inf is refused by run_pool's finiteness check
        return torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))


def _mentions_booleans(body: bytes | bytearray) -> bool:
    """``b"true" in body or b"false" in body``, faster: numbers hold no ``t`` or ``f``, so a byte search
    (memchr) for those skips them, and only the few places they occur (keys, dtype names) are compared.
    A substring search took 2-4 ms of a 224×224×3 request (1.6 MB), this one 0.2 ms."""
    for first, word in ((b"t", b"true"), (b"f", b"false")):
        at, seen = body.find(first), 0
        while at != -1:
            if body.startswith(word, at):
                return True
            seen += 1
            if seen > 64:  # text full of them: one substring search from here is cheaper than a loop
                if body.find(word, at) != -1:
                    return True
                break
            at = body.find(first, at + 1)
    return False


def _has_booleans(data: Any) -> bool:
    """Whether ``data`` holds a JSON boolean. orjson writes numbers and lists without any "t" or "f", and
    a C scan of its output is far cheaper than a walk over the lists in Python; data with text in it
    (quotes) is left to numpy, which refuses it whatever else it holds."""
    try:
        text = orjson.dumps(data)
    except TypeError:
        return False
    return b'"' not in text and (b"t" in text or b"f" in text)


def _kind_name(dtype: np.dtype) -> str:
    names = {"b": "booleans", "U": "strings", "S": "strings", "c": "complex numbers"}
    return names.get(dtype.kind, str(dtype))


def number_bytes(dtype: torch.dtype) -> int:
    """The most bytes orjson writes for one number of an output of ``dtype``, its comma included: the
    shortest round-trip form, at most 9 significant digits for float32 ("-0.0000012345679", 16 bytes) and
    17 for float64 ("-2.2250738585072014e-308", 24 bytes); other dtypes are written as float32."""
    return 25 if dtype == torch.float64 else 17


def size_bound(
    shape: tuple[int, ...], dtype: torch.dtype, *, nested: bool = True, rest: dict[str, Any] | None = None
) -> int:
    """An upper bound on the bytes of a JSON answer holding an output of ``shape`` and ``dtype`` as nested
    lists (flat with ``nested=False``), plus the rest of the document (``rest``, written exactly), without
    writing the numbers."""
    count = math.prod(shape)
    # Every list has two brackets and at most one comma after it: shape (2, 3) is 1 + 2 lists.
    lists = sum(math.prod(shape[:depth]) for depth in range(len(shape))) if nested else 1
    text = len(orjson.dumps(rest)) + 16 if rest is not None else 0  # 16: the numbers' key, quoted, and colon
    return text + count * number_bytes(dtype) + 3 * lists


def header(output: Tensor, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """The answer's document but for its ``data`` (what :func:`size_bound` takes as ``rest``)."""
    return {
        "method": method,
        "params": params,
        "shape": list(output.shape),
        "dtype": str(output.dtype).removeprefix("torch."),
    }


def encode(output: Tensor, method: str, params: dict[str, Any]) -> Response:
    array = output.numpy()
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float32)  # orjson writes float32/float64 arrays natively
    doc = {**header(output, method, params), "data": np.ascontiguousarray(array)}
    body = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, media_type="application/json")
