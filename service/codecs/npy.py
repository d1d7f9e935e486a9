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

from ..errors import BadRequest, Unprocessable
from .base import Limits, check_elements

__all__ = ["decode", "encode"]

_MAX_HEADER = 10_000  # numpy's own default cap on header length
_FLOAT_SIZES = (2, 4, 8)  # float16/32/64: the float types torch has (not longdouble)


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
        raise BadRequest(f"malformed .npy: {error}") from None
    if dtype.hasobject:
        raise Unprocessable(f"object arrays are refused (.npy dtype {dtype}); send numbers")
    if dtype.kind == "c":
        raise Unprocessable(f"complex arrays are not supported (.npy dtype {dtype}); send real numbers")
    if dtype.kind not in "iuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise Unprocessable(f"the .npy dtype must be a real integer or float type (got {dtype})")
    if dtype.kind == "f" and dtype.itemsize not in _FLOAT_SIZES:
        raise Unprocessable(f"the .npy float type must be float16, float32 or float64 (got {dtype})")
    if not 1 <= len(shape) <= 5:
        raise Unprocessable(f"input must have rank 1 to 5 (got rank {len(shape)}, shape {shape})")
    if any(size < 0 for size in shape):
        raise BadRequest(f"malformed .npy: the header's shape {shape} has a negative dimension")
    count = math.prod(shape)
    expected = count * dtype.itemsize
    offset = stream.tell()
    available = memoryview(body).nbytes - offset
    if expected != available:
        raise BadRequest(
            f"malformed .npy: header says shape {shape} of {dtype} ({expected} bytes) "
            f"but {available} bytes follow it"
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
