"""``.npy`` bytes (``application/x-npy`` or ``application/octet-stream``) in and out.

The header is read and checked first: its shape × itemsize must match the bytes that follow, so a
header that lies about its size never gets an allocation; then the data is viewed in place and copied
once into the tensor's own memory (``np.load`` would read it in 256 KiB pieces, copying each twice).
Object dtypes are refused from the header, so nothing is ever unpickled.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from numpy.lib import format as npformat
from starlette.responses import Response
from torch import Tensor

from ..errors import BadRequest, Unprocessable
from .base import Limits, check_elements

__all__ = ["decode", "encode"]

_MAX_HEADER = 10_000  # numpy's own default cap on header length


def decode(body: bytes, limits: Limits) -> Tensor:
    stream = io.BytesIO(body)
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
    except (ValueError, OSError, SyntaxError, TypeError) as error:
        raise BadRequest(f"malformed .npy: {error}") from None
    if dtype.hasobject:
        raise Unprocessable(f"object arrays are refused (.npy dtype {dtype}); send numbers")
    if dtype.kind == "c":
        raise Unprocessable(f"complex arrays are not supported (.npy dtype {dtype}); send real numbers")
    if dtype.kind not in "iuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise Unprocessable(f"the .npy dtype must be a real integer or float type (got {dtype})")
    if not 1 <= len(shape) <= 5:
        raise Unprocessable(f"input must have rank 1 to 5 (got rank {len(shape)}, shape {shape})")
    expected = math.prod(shape) * dtype.itemsize
    available = len(body) - stream.tell()
    if expected != available:
        raise BadRequest(
            f"malformed .npy: header says shape {shape} of {dtype} ({expected} bytes) "
            f"but {available} bytes follow it"
        )
    check_elements(shape, limits)
    # A read-only view of the body; each branch below makes the one copy the tensor owns (C order).
    view = np.frombuffer(body, dtype=dtype, count=math.prod(shape), offset=stream.tell())
    view = view.reshape(shape, order="F" if fortran else "C")
    if dtype.kind != "f":
        array = np.asarray(view, dtype=np.float32, order="C")
    else:
        array = np.array(view, dtype=dtype.newbyteorder("="), order="C")
    return torch.from_numpy(array)


def encode(output: Tensor, headers: dict[str, str]) -> Response:
    array = output.numpy() if output.dtype != torch.bfloat16 else output.float().numpy()
    stream = io.BytesIO()
    npformat.write_array(stream, np.ascontiguousarray(array), allow_pickle=False)
    return Response(stream.getvalue(), media_type="application/x-npy", headers=headers)
