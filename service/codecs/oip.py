"""The Open Inference Protocol's (KServe v2) tensors and parameters, for REST and gRPC alike.

A request carries one input tensor: a datatype (``FP16``, ``FP32``, ``FP64``, ``INT8``-``INT64`` or
``UINT8``; integers are pooled as float32), a shape, and its elements as raw little-endian bytes (the
binary tensor extension over REST, ``raw_input_contents`` over gRPC) or as numbers (JSON ``data``, gRPC
``contents``). The shape is checked against the element limit before anything is allocated, and raw bytes
against shape × itemsize.

Request-level parameters carry the method's parameters plus ``mode`` and ``seed``. Protocol parameters
are scalars, so a tuple may come as a comma-separated string (``"2,3"``, read by
:func:`service.params.parse_text`, as in a query string) or, over REST, as a JSON array. Response
parameters are scalars too: tuples go back as the same comma-separated text.

Errors are our usual :class:`service.errors.ServiceError` subclasses; the routes write them as the
protocol's ``{"error": "<message>"}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import torch
from torch import Tensor

from ..errors import BadRequest, PayloadTooLarge, shorten
from ..params import parse_text, split_run_options
from . import json as json_codec
from .base import Limits, check_elements

__all__ = [
    "DATATYPES",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "Decoded",
    "RestOutput",
    "datatype_of",
    "decode_rest",
    "encode_rest",
    "from_numbers",
    "from_raw",
    "parameter_value",
    "reported_parameters",
    "run_options",
    "several_inputs",
]

INPUT_NAME = "input"
OUTPUT_NAME = "output"
# The datatypes an input may have, as the protocol names them, with their little-endian numpy types.
DATATYPES: dict[str, np.dtype] = {
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("u1"),
}
_OUTPUT_TYPES = {torch.float16: "FP16", torch.float32: "FP32", torch.float64: "FP64"}
# Request parameters that belong to the protocol, not to the method.
_PROTOCOL_PARAMETERS = frozenset({"binary_data_output"})
_NAMED = 3  # inputs a message names


@dataclass(frozen=True)
class Decoded:
    """A checked request: its tensor, the method's parameters, mode and seed, and what the client asked
    of the response."""

    tensor: Tensor
    params: dict[str, Any]
    mode: Any
    seed: Any
    request_id: str | None = None
    binary_output: bool = False  # REST: the output as raw bytes after the JSON (binary tensor extension)


@dataclass(frozen=True)
class RestOutput:
    """A REST response: the body, its media type and, for binary output, the JSON header's length."""

    body: bytes
    media_type: str
    header_length: int | None


def several_inputs(count: int, shown: Sequence[str]) -> BadRequest:
    """The error for a request of ``count`` inputs, naming the first few (``shown``, as the message
    writes them): a request of thousands must not draw an error that lists them all."""
    names = ", ".join(shown[:_NAMED]) + (", …" if count > _NAMED else "")
    return BadRequest(f"a pooling model takes one input tensor (got {count}: {names})")


def _dtype(datatype: Any) -> np.dtype:
    dtype = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise BadRequest(
            f"unsupported datatype {shorten(datatype)}; the input may be one of: {', '.join(DATATYPES)}"
        )
    return dtype


def _shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, Sequence) or isinstance(shape, (str, bytes)):
        raise BadRequest(f"the input's shape must be a list of integers (got {shorten(shape)})")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise BadRequest(f"the input's shape must be non-negative integers (got {shorten(list(shape))})")
    if not 1 <= len(shape) <= 5:
        raise BadRequest(
            f"the input must have rank 1 to 5 (got rank {len(shape)}, shape {shorten(list(shape))})"
        )
    return tuple(int(s) for s in shape)


def from_raw(raw: bytes | bytearray | memoryview, datatype: Any, shape: Any, limits: Limits) -> Tensor:
    """A tensor from raw little-endian bytes: used in place when they are writable, aligned floats (a
    request body read into a ``bytearray``), else copied once; integers become float32."""
    dtype, dims = _dtype(datatype), _shape(shape)
    check_elements(dims, limits)
    count = math.prod(dims)
    size = memoryview(raw).nbytes
    if size != count * dtype.itemsize:
        raise BadRequest(
            f"the input has {size} bytes of data, but shape {list(dims)} of {datatype} needs "
            f"{count * dtype.itemsize} bytes"
        )
    view = np.frombuffer(raw, dtype=dtype, count=count).reshape(dims)
    if dtype.kind == "f" and dtype.isnative and view.flags.writeable and view.flags.aligned:
        return torch.from_numpy(view)  # shares the body's memory, which nothing else uses
    target = np.float32 if dtype.kind != "f" else dtype.newbyteorder("=")
    return torch.from_numpy(np.array(view, dtype=target, order="C"))


def from_numbers(data: Any, datatype: Any, shape: Any, limits: Limits) -> Tensor:
    """A tensor from numbers, flat or nested in the shape's lists (JSON ``data`` or gRPC ``contents``)."""
    dtype, dims = _dtype(datatype), _shape(shape)
    check_elements(dims, limits)
    target = dtype.newbyteorder("=") if dtype.kind == "f" else np.dtype(np.float32)
    # The JSON codec's own reading of nested lists: the same checks for ragged and non-numeric data.
    tensor = json_codec.to_tensor(data, target, limits)
    count = math.prod(dims)
    if tensor.numel() != count:
        raise BadRequest(
            f"the input's data has {tensor.numel()} values, but shape {list(dims)} needs {count}"
        )
    return tensor.reshape(dims)


def datatype_of(output: Tensor) -> str:
    return _OUTPUT_TYPES[output.dtype]


def parameter_value(value: Any) -> Any:
    """A request parameter as the method takes it: text as a query string value is read, so ``"2,3"`` is
    ``[2, 3]`` and ``"7"`` is 7; JSON arrays, numbers and booleans as they are."""
    return parse_text(value) if isinstance(value, str) else value


def run_options(parameters: Mapping[str, Any]) -> tuple[dict[str, Any], Any, Any]:
    """The method's parameters, mode and seed from request-level parameters (protocol ones left out)."""
    values = {k: parameter_value(v) for k, v in parameters.items() if k not in _PROTOCOL_PARAMETERS}
    return split_run_options(values)


def _text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value) + ("," if len(value) == 1 else "")
    return str(value)


def reported_parameters(params: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """The resolved parameters, mode and seed as protocol scalars: tuples as ``"2,2"`` text, unset
    (None) values left out, so a ``seed`` is present exactly when one was used."""
    reported: dict[str, bool | int | float | str] = {}
    for key, value in params.items():
        if value is None:
            continue
        reported[key] = value if isinstance(value, (bool, int, float, str)) else _text(value)
    return reported


# -- REST -----------------------------------------------------------------------------------------


def _header_length(header: str | None, body_size: int, max_json_bytes: int) -> int | None:
    if header is None:
        return None
    text = header.strip()
    if not text.isdecimal():
        raise BadRequest(f"Inference-Header-Content-Length must be a byte count (got {shorten(header)})")
    length = int(text)
    if length > body_size:
        raise BadRequest(
            f"Inference-Header-Content-Length of {length} bytes is larger than the body ({body_size} bytes)"
        )
    if length > max_json_bytes:
        raise PayloadTooLarge(
            f"the JSON header of {length} bytes is over the limit of {max_json_bytes} bytes"
        )
    return length


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be an object (got {type(value).__name__})")
    return value


def decode_rest(body: bytes | bytearray, header: str | None, limits: Limits, max_json_bytes: int) -> Decoded:
    """A REST infer request: JSON, or with ``Inference-Header-Content-Length`` (``header``) a JSON header
    followed by the binary data of the inputs that give a ``binary_data_size``."""
    length = _header_length(header, len(body), max_json_bytes)
    view = memoryview(body)
    text, binary = (view, view[len(view) :]) if length is None else (view[:length], view[length:])
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"malformed JSON: {error}") from None
    if not isinstance(doc, dict):
        raise BadRequest(f"the request must be a JSON object (got {type(doc).__name__})")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest('the request has no "inputs": send one input tensor')
    if len(inputs) != 1:
        names = [shorten(i.get("name")) if isinstance(i, dict) else "?" for i in inputs[:_NAMED]]
        raise several_inputs(len(inputs), names)
    tensor_doc = _object(inputs[0], "an input")
    tensor_params = _object(tensor_doc.get("parameters"), "an input's parameters")
    datatype, shape = tensor_doc.get("datatype"), tensor_doc.get("shape")
    size = tensor_params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest(f"binary_data_size must be a byte count (got {shorten(size)})")
        if size != len(binary):
            raise BadRequest(
                f"the input's binary_data_size is {size} bytes, but {len(binary)} bytes follow the "
                "JSON header"
            )
        tensor = from_raw(binary, datatype, shape, limits)
    else:
        if len(binary):
            raise BadRequest(
                f"{len(binary)} bytes follow the JSON header, but no input has a binary_data_size"
            )
        if "data" not in tensor_doc:
            raise BadRequest('the input has neither "data" nor a binary_data_size')
        tensor = from_numbers(tensor_doc["data"], datatype, shape, limits)
    parameters = _object(doc.get("parameters"), '"parameters"')
    params, mode, seed = run_options(parameters)
    binary_output = parameters.get("binary_data_output") is True
    outputs = doc.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise BadRequest(f'"outputs" must be a list (got {type(outputs).__name__})')
        for output in outputs:
            name = _object(output, "a requested output").get("name")
            if name != OUTPUT_NAME:
                raise BadRequest(
                    f"unknown output {shorten(name)}: a pooling model has one output, {OUTPUT_NAME!r}"
                )
            flag = _object(output.get("parameters"), "an output's parameters").get("binary_data")
            if flag is not None:
                binary_output = flag is True
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f'"id" must be a string (got {type(request_id).__name__})')
    return Decoded(tensor, params, mode, seed, request_id, binary_output)


def encode_rest(
    output: Tensor, model: str, params: Mapping[str, Any], request_id: str | None, binary: bool
) -> RestOutput:
    """The infer response: JSON with the output's ``data``, or a JSON header and the raw bytes."""
    array = np.ascontiguousarray(output.numpy())
    tensor: dict[str, Any] = {
        "name": OUTPUT_NAME,
        "datatype": datatype_of(output),
        "shape": list(array.shape),
    }
    if binary:
        tensor["parameters"] = {"binary_data_size": array.nbytes}
    else:
        # orjson writes float32/float64 arrays natively; float16 goes as float32 numbers.
        tensor["data"] = (
            array.reshape(-1) if array.dtype != np.float16 else array.reshape(-1).astype(np.float32)
        )
    doc: dict[str, Any] = {"model_name": model, "model_version": "1"}
    if request_id is not None:
        doc["id"] = request_id
    doc["parameters"] = reported_parameters(params)
    doc["outputs"] = [tensor]
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binary:
        return RestOutput(header, "application/json", None)
    return RestOutput(b"".join((header, array.data)), "application/octet-stream", len(header))
