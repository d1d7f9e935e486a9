"""``.npy`` bytes (``application/x-npy`` or ``application/octet-stream``) in and out.

The header is read and checked first: its shape × itemsize must match the bytes that follow, so a
header that lies about its size never gets an allocation. Then the data becomes the tensor:

- in place, with no copy, when the body is writable (the ``bytearray`` that :func:`service.body.read_body`
  fills), the dtype a native-endian float16/32/64 and the order C: the tensor shares the body's memory;
- otherwise with one copy into the tensor's own C-ordered memory (read-only ``bytes``, Fortran order,
  big-endian, integers → float32). ``np.load`` would read the data in 256 KiB pieces, copying each twice.

Object dtypes are refused from the header, so nothing is ever unpickled. The response is the header
numpy writes for the array, then its data, joined once (no ``BytesIO``); the bytes equal ``np.save``'s.
"""

from __future__ import annotations

import io
import math
from tokenize import TokenError

import numpy as np
import torch
from numpy.lib import format as npformat
from starlette.responses import Response
from torch import Tensor

from ..errors import BadRequest, Unprocessable, clip, shorten
from .base import Limits, check_elements

__all__ = ["decode", "encode"]

_MAX_HEADER = 10_000  # numpy's own default cap on header length
_FLOAT_SIZES = (2, 4, 8)  # float16/32/64: the float types torch has (not longdouble)
_HEADER_KEYS = "the keys 'descr', 'fortran_order' and 'shape'"
# What numpy's header errors mean, by how its message starts. Its text is not passed on: it can quote the
# whole header, or name a parser's node with its heap address (``<ast.Call object at 0x7f…>``).
_HEADER_PROBLEMS = (
    ("the magic string is not correct", "the body does not start with the .npy magic string"),
    ("EOF", "the body ends inside the .npy header"),
    ("Header info length", f"the header is over the limit of {_MAX_HEADER} bytes"),
    ("Header is not a dictionary", f"the header must be a dict with {_HEADER_KEYS}"),
    ("Header does not contain the correct keys", f"the header must have exactly {_HEADER_KEYS}"),
    ("descr is not a valid dtype descriptor", "the header's descr is not a dtype"),
    ("shape is not valid", "the header's shape is not a tuple of integers"),
    ("fortran_order is not a valid bool", "the header's fortran_order is not True or False"),
)
_UNREADABLE = f"the header is not a Python dict literal with {_HEADER_KEYS}"


class _Reader:
    """A read-only file over the body for numpy's header readers: each ``read`` copies only what it
    returns, where ``io.BytesIO`` would copy a whole ``bytearray`` up front."""

    def __init__(self, body: bytes | bytearray | memoryview) -> None:
        self._view = memoryview(body).cast("B")
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size < 0 else self._position + size
        data = bytes(self._view[self._position : end])
        self._position += len(data)
        return data

    def tell(self) -> int:
        return self._position


def decode(body: bytes | bytearray | memoryview, limits: Limits) -> Tensor:
    stream = _Reader(body)
    try:
        version = npformat.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(stream, max_header_size=_MAX_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(stream, max_header_size=_MAX_HEADER)
        else:
            raise BadRequest(f"unsupported .npy format version {version[0]}.{version[1]} (use 1.0 or 2.0)")
    except BadRequest:
        raise
    except (ValueError, OSError, SyntaxError, TypeError, TokenError) as error:
        # TokenError: numpy tokenizes the header dict, and an unclosed bracket is not a SyntaxError.
        raise BadRequest(f"malformed .npy: {_header_problem(error)}") from None
    named = clip(str(dtype))  # a structured dtype can be as long as the header
    if dtype.hasobject:
        raise Unprocessable(f"object arrays are refused (.npy dtype {named}); send numbers")
    if dtype.kind == "c":
        raise Unprocessable(f"complex arrays are not supported (.npy dtype {named}); send real numbers")
    if dtype.kind not in "iuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise Unprocessable(f"the .npy dtype must be a real integer or float type (got {named})")
    if dtype.kind == "f" and dtype.itemsize not in _FLOAT_SIZES:
        raise Unprocessable(f"the .npy float type must be float16, float32 or float64 (got {named})")
    if not 1 <= len(shape) <= 5:
        raise Unprocessable(f"input must have rank 1 to 5 (got rank {len(shape)}, shape {shorten(shape)})")
    if any(size < 0 for size in shape):
        raise BadRequest(f"malformed .npy: the header's shape {shorten(shape)} has a negative dimension")
    count = math.prod(shape)
    expected = count * dtype.itemsize
    offset = stream.tell()
    available = memoryview(body).nbytes - offset
    if expected != available:
        raise BadRequest(
            f"malformed .npy: header says shape {shorten(shape)} of {dtype} ({shorten(expected)} "
            f"bytes) but {available} bytes follow it"
        )
    check_elements(shape, limits)  # each dimension too: an empty array may claim a 2**62-long one
    # A view of the body: writable if the body is, aligned if the header's padding keeps it so.
    view = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    in_place = view.flags.writeable and view.flags.aligned and not fortran
    if in_place and dtype.kind == "f" and dtype.isnative:
        return torch.from_numpy(view.reshape(shape))  # shares the body's memory, which nothing else uses
    # Otherwise the one copy the tensor owns, in C order.
    view = view.reshape(shape, order="F" if fortran else "C")
    if dtype.kind != "f":
        array = np.asarray(view, dtype=np.float32, order="C")
    else:
        array = np.array(view, dtype=dtype.newbyteorder("="), order="C")
    return torch.from_numpy(array)


def _header_problem(error: Exception) -> str:
    """What is wrong with a .npy header, in our words (see _HEADER_PROBLEMS)."""
    text = str(error)
    for start, problem in _HEADER_PROBLEMS:
        if text.startswith(start):
            return problem
    return _UNREADABLE


def _header(array: np.ndarray) -> bytes:
    """The .npy header ``np.save`` writes for ``array``: format 1.0, the oldest that fits, as it always
    does for a plain dtype (numpy's 64 dimensions are far from 1.0's 64 KiB of header)."""
    stream = io.BytesIO()
    npformat.write_array_header_1_0(stream, npformat.header_data_from_array_1_0(array))
    return stream.getvalue()


def encode(output: Tensor) -> Response:
    array = output.numpy() if output.dtype != torch.bfloat16 else output.float().numpy()
    array = np.ascontiguousarray(array)
    # One copy of the data, straight into the response bytes (a C-contiguous array is a flat buffer).
    body = b"".join((_header(array), array.data))
    return Response(body, media_type="application/x-npy")
