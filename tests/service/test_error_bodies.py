"""Error messages repeat little of what the client sent, and leak nothing (issue 17, findings 11 and 12).

Every client value a message names is cut to 64 characters (``service.errors.shorten``); unknown
parameters are counted, with the first three named; a whole error body, on every protocol and the page,
is under 4 KiB whatever the request; and no message shows a heap address or a Python class name. The
cases are the issue's own measurements: a 60 KB model name, 1 MB datatype, shape, output name, mode and
seed values, a 3.3 MB request of unknown parameters, and gRPC status details.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from tritonclient.grpc import service_pb2

import poolcore
from poolcore.registry import ALIASES
from service.app import create_app
from service.errors import MAX_ERROR_BYTES, clip_detail, clip_status, error_body, shorten

from .support import HEADLESS, LiveServer, free_port, live_server_process, npy_bytes, test_settings

BODY_LIMIT = 8 << 20  # room for the 1 MB values and 3.3 MB request
BIG = "x" * (1 << 20)  # a 1 MB value
X = np.random.default_rng(1717).uniform(0.1, 1.0, (1, 1, 4, 4)).astype(np.float32)
UNKNOWN = {f"p{i:06d}xxxxxxxxxxxxxxxxxxxxxxx": 1 for i in range(100_000)}  # 3.3 MB of JSON
# What a message must never carry: a heap address, or a Python exception or AST class name.
LEAKS = re.compile(r"0x[0-9a-fA-F]{6,}|\bast\.|Error\b|Exception\b|object at")


def _long_run(text: str) -> int:
    """The longest run of one repeated character: a long client value shows as one."""
    return max((len(m.group(0)) for m in re.finditer(r"(.)\1*", text)), default=0)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = test_settings(max_body_bytes=BODY_LIMIT, max_json_bytes=BODY_LIMIT)
    with TestClient(create_app(settings)) as c:
        yield c


# -- the helpers ------------------------------------------------------------------------------------


class TestShorten:
    def test_at_the_limit_whole(self) -> None:
        value = "a" * 62  # its repr, quotes included, is 64 characters
        assert shorten(value) == repr(value)

    def test_past_the_limit_cut(self) -> None:
        value = "a" * 63
        assert shorten(value) == repr(value)[:64] + "…"

    def test_huge_int_does_not_raise(self) -> None:
        # repr() of an int over 4300 digits raises ValueError: a message must still be written.
        value = 10**5000
        shown = shorten(value)
        assert len(shown) <= 65 and "5001 digits" in shown

    def test_unrepresentable_value(self) -> None:
        class Broken:
            def __repr__(self) -> str:
                raise RuntimeError("no")

        assert len(shorten(Broken())) <= 65


class TestClipDetail:
    def test_at_the_limit_unchanged(self) -> None:
        room = MAX_ERROR_BYTES - 1 - len(b'{"detail":""}')
        detail = "d" * room
        assert len(error_body("detail", detail)) == MAX_ERROR_BYTES - 1
        assert clip_detail(detail) == detail

    def test_past_the_limit_clipped(self) -> None:
        room = MAX_ERROR_BYTES - len(b'{"detail":""}')
        detail = "d" * room
        body = error_body("detail", detail)
        assert len(body) < MAX_ERROR_BYTES
        assert orjson.loads(body)["detail"].endswith("…")

    @pytest.mark.parametrize("char", ["\x00", "é", "😀", '"'])
    def test_escapes_and_wide_characters_count(self, char: str) -> None:
        # JSON writes \u0000 as six bytes, and UTF-8 takes up to four for one character.
        body = error_body("error", char * 10_000)
        assert len(body) < MAX_ERROR_BYTES
        assert orjson.loads(body)["error"].startswith(char)

    def test_addresses_removed(self) -> None:
        detail = clip_detail("cannot read <_io.BytesIO object at 0x7f3a5c1d2e80>")
        assert "0x7f" not in detail and "object at" not in detail

    def test_status_details_at_and_past_the_limit(self) -> None:
        assert clip_status("s" * (MAX_ERROR_BYTES - 1)) == "s" * (MAX_ERROR_BYTES - 1)
        clipped = clip_status("s" * MAX_ERROR_BYTES)
        assert clipped.endswith("…") and len(clipped.encode()) < MAX_ERROR_BYTES

    def test_status_details_count_percent_encoding(self) -> None:
        # gRPC sends each byte outside printable ASCII as %XX: é, two bytes in UTF-8, is six.
        clipped = clip_status("é" * 10_000)
        assert 6 * len(clipped) < MAX_ERROR_BYTES + 6

    def test_normal_message_unchanged(self) -> None:
        message = "kernel_size: Input should be greater than or equal to 1 (got 0)"
        assert clip_detail(message) == message


# -- /pool and /v2 in process -----------------------------------------------------------------------


def _input(**changes: Any) -> dict[str, Any]:
    tensor = {"name": "input", "datatype": "FP32", "shape": list(X.shape), "data": X.ravel().tolist()}
    return {**tensor, **changes}


def _v2(client: TestClient, doc: dict[str, Any], model: str = "avg") -> Any:
    return client.post(f"/v2/models/{model}/infer", content=orjson.dumps(doc))


def _pool(client: TestClient, params: dict[str, Any]) -> Any:
    body = orjson.dumps({"data": X.tolist(), "params": params})
    return client.post("/pool/avg", content=body, headers={"content-type": "application/json"})


CASES: dict[str, tuple[Any, int, str]] = {
    # name: (request, status, a fragment of the message)
    "v2 model name 60 KB": (lambda c: c.get("/v2/models/" + "m" * 60_000), 404, "unknown model 'mmm"),
    "v2 version 60 KB": (lambda c: c.get("/v2/models/avg/versions/" + "9" * 60_000), 404, "no version"),
    "v2 infer model name 60 KB": (
        lambda c: _v2(c, {"inputs": [_input()]}, "m" * 60_000),
        404,
        "unknown model",
    ),
    "v2 datatype 1 MB": (lambda c: _v2(c, {"inputs": [_input(datatype=BIG)]}), 400, "unsupported datatype"),
    "v2 shape 1 MB": (lambda c: _v2(c, {"inputs": [_input(shape=BIG)]}), 400, "shape must be a list"),
    "v2 shape of 200,000 dims": (
        lambda c: _v2(c, {"inputs": [_input(shape=[1] * 200_000)]}),
        400,
        "rank 1 to 5 (got rank 200000",
    ),
    "v2 negative shape": (
        lambda c: _v2(c, {"inputs": [_input(shape=[-1] * 200_000)]}),
        400,
        "non-negative integers",
    ),
    "v2 output name 1 MB": (
        lambda c: _v2(c, {"inputs": [_input()], "outputs": [{"name": BIG}]}),
        400,
        "unknown output",
    ),
    "v2 many inputs": (
        lambda c: _v2(c, {"inputs": [_input(name=f"in{i}" + "n" * 100) for i in range(10_000)]}),
        400,
        "one input tensor (got 10000",
    ),
    "v2 mode 1 MB": (
        lambda c: _v2(c, {"inputs": [_input()], "parameters": {"kernel_size": 2, "mode": BIG}}),
        400,
        "mode must be",
    ),
    "v2 seed 1 MB": (
        lambda c: _v2(c, {"inputs": [_input()], "parameters": {"kernel_size": 2, "seed": BIG}}),
        400,
        "seed must be",
    ),
    "v2 parameter value 1 MB": (
        lambda c: _v2(c, {"inputs": [_input()], "parameters": {"kernel_size": BIG}}),
        400,
        "kernel_size",
    ),
    "v2 binary_data_size 1 MB": (
        lambda c: _v2(c, {"inputs": [_input(parameters={"binary_data_size": BIG})]}),
        400,
        "binary_data_size must be",
    ),
    "v2 header length 1 MB": (
        lambda c: c.post(
            "/v2/models/avg/infer", content=b"{}", headers={"inference-header-content-length": "x" * 60_000}
        ),
        400,
        "must be a byte count",
    ),
    "v2 unknown parameters 3.3 MB": (
        lambda c: _v2(c, {"inputs": [_input()], "parameters": {"kernel_size": 2, **UNKNOWN}}),
        400,
        "100000 unknown parameters",
    ),
    "pool mode 1 MB": (lambda c: _pool(c, {"kernel_size": 2, "mode": BIG}), 422, "mode must be"),
    "pool seed 1 MB": (lambda c: _pool(c, {"kernel_size": 2, "seed": BIG}), 422, "seed must be"),
    "pool parameter name 1 MB": (lambda c: _pool(c, {"kernel_size": 2, BIG: 1}), 422, "unknown parameter"),
    "pool unknown parameters 3.3 MB": (
        lambda c: _pool(c, {"kernel_size": 2, **UNKNOWN}),
        422,
        "100000 unknown parameters",
    ),
    "pool query parameter 1 MB": (
        lambda c: c.post(
            "/pool/avg",
            params={"kernel_size": "2", "mode": BIG[:60_000]},
            content=npy_bytes(X),
            headers={"content-type": "application/x-npy"},
        ),
        422,
        "mode must be",
    ),
    "pool content type 60 KB": (
        lambda c: c.post("/pool/avg", content=b"1", headers={"content-type": "text/" + "t" * 60_000}),
        415,
        "",
    ),
    "pool accept 60 KB": (
        lambda c: c.post(
            "/pool/avg?kernel_size=2",
            content=npy_bytes(X),
            headers={"content-type": "application/x-npy", "accept": "text/" + "t" * 60_000},
        ),
        406,
        "cannot produce",
    ),
    "pool method 60 KB": (lambda c: c.post("/pool/" + "m" * 60_000, content=b"{}"), 404, "unknown"),
    "pool Content-Length": (
        lambda c: c.post("/pool/avg", content=b"", headers={"content-length": "9" * 60_000}),
        400,
        "invalid content-length",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_error_body_is_small(client: TestClient, name: str) -> None:
    send, status, fragment = CASES[name]
    response = send(client)
    assert response.status_code == status, response.text[:300]
    assert len(response.content) < MAX_ERROR_BYTES, f"{len(response.content)} bytes"
    doc = response.json()
    (message,) = doc.values()  # {"detail": ...} or, on /v2, {"error": ...}
    assert fragment in message.lower()
    assert _long_run(message) <= 64, message[:300]  # each client value cut to 64 characters
    assert not LEAKS.search(message), message


def test_unknown_parameters_counted_first_three_named(client: TestClient) -> None:
    message = _pool(client, {"kernel_size": 2, **UNKNOWN}).json()["detail"]
    names = list(UNKNOWN)
    assert "100000 unknown parameters" in message
    assert all(name in message for name in names[:3])
    assert names[3] not in message


def test_three_unknown_parameters_named_as_before(client: TestClient) -> None:
    message = _pool(client, {"kernel_size": 2, "foo": 1, "bar": 2, "baz": 3}).json()["detail"]
    each = "foo: unknown parameter; bar: unknown parameter; baz: unknown parameter"
    assert message == f"invalid parameters for 'avg': {each}"


def test_four_unknown_parameters_counted(client: TestClient) -> None:
    params = {"kernel_size": 0, "foo": 1, "bar": 2, "baz": 3, "qux": 4}
    message = _pool(client, params).json()["detail"]
    assert message.startswith("invalid parameters for 'avg': ")
    assert "4 unknown parameters (foo, bar, baz, …)" in message and "qux" not in message
    assert "kernel_size: " in message  # a known parameter's own error is still given


def test_normal_messages_unchanged(client: TestClient) -> None:
    known = ", ".join([*poolcore.methods(), *ALIASES])
    response = client.get("/v2/models/median")
    assert response.json() == {"error": f"unknown model 'median'; the models are: {known}"}
    response = client.get("/v2/models/avg/versions/2")
    assert response.json() == {"error": "model 'avg' has no version '2' (its one version is '1')"}
    response = _v2(client, {"inputs": [_input(datatype="FP8")]})
    message = "unsupported datatype 'FP8'; the input may be one of: FP16, FP32, FP64, INT8, INT16, INT32, "
    assert response.json() == {"error": message + "INT64, UINT8"}
    response = _pool(client, {"kernel_size": 2, "mode": "test"})
    assert response.json() == {"detail": "mode must be 'eval' or 'train' (got 'test')"}


# -- finding 12: the multipart boundary and .npy headers --------------------------------------------


def _multipart(boundary: str) -> tuple[bytes, dict[str, str]]:
    part = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="x.npy"\r\n'
        "Content-Type: application/x-npy\r\n\r\n"
    ).encode()
    body = part + npy_bytes(X) + f"\r\n--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


def test_multipart_boundary_at_the_limit(client: TestClient) -> None:
    body, headers = _multipart("b" * 256)
    response = client.post("/pool/avg?kernel_size=2", content=body, headers=headers)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("length", [257, 4000])
def test_multipart_boundary_past_the_limit(client: TestClient, length: int) -> None:
    body, headers = _multipart("b" * length)
    response = client.post("/pool/avg?kernel_size=2", content=body, headers=headers)
    assert response.status_code == 400, response.text
    message = response.json()["detail"]
    assert "boundary" in message and "256" in message and not LEAKS.search(message)
    assert len(response.content) < MAX_ERROR_BYTES


def _npy(header: str, version: bytes = b"\x01\x00") -> bytes:
    head = header.encode("latin-1")
    head += b" " * (63 - (10 + len(head)) % 64) + b"\n"
    return b"\x93NUMPY" + version + struct.pack("<H", len(head)) + head


NPY_HEADERS = {
    "call": (_npy("{'descr': f(), 'fortran_order': False, 'shape': (1,)}"), "dict literal"),
    "attribute": (_npy("{'descr': a.b, 'fortran_order': False, 'shape': (1,)}"), "dict literal"),
    "unclosed": (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,"), "dict literal"),
    "list": (_npy("[1, 2]"), "dict"),
    "keys": (_npy("{'descr': '<f4', 'shape': (1,)}"), "keys"),
    "descr": (_npy("{'descr': 'zzz', 'fortran_order': False, 'shape': (1,)}"), "descr"),
    "shape": (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': 'x'}"), "shape"),
    "fortran_order": (_npy("{'descr': '<f4', 'fortran_order': 3, 'shape': (1,)}"), "fortran_order"),
    "magic": (b"\x93NUMPZ\x01\x00" + b" " * 64, "magic"),
    "truncated": (b"\x93NUMPY\x01\x00" + struct.pack("<H", 100) + b"{", "ends"),
    "header too long": (b"\x93NUMPY\x02\x00" + struct.pack("<I", 20_000) + b" " * 20_000, "10000"),
    "huge dimension": (
        _npy("{'descr': '<f4', 'fortran_order': False, 'shape': (" + "9" * 4000 + ",)}"),
        "header says shape",
    ),
    "huge int": (
        _npy("{'descr': '<f4', 'fortran_order': False, 'shape': (" + "9" * 5000 + ",)}"),
        "dict literal",
    ),
}


@pytest.mark.parametrize("name", list(NPY_HEADERS))
def test_npy_header_errors_leak_nothing(client: TestClient, name: str) -> None:
    body, fragment = NPY_HEADERS[name]
    response = client.post(
        "/pool/avg?kernel_size=2", content=body, headers={"content-type": "application/x-npy"}
    )
    assert response.status_code == 400, response.text[:300]
    message = response.json()["detail"]
    assert message.startswith("malformed .npy") and fragment in message, message
    assert not LEAKS.search(message), message
    assert _long_run(message) <= 64 and len(response.content) < MAX_ERROR_BYTES


# -- the page ---------------------------------------------------------------------------------------


def test_page_error_is_clipped() -> None:
    from service.ui.handlers import PageError

    error = PageError(422, "kernel_size: bad " + "k" * 100_000)
    assert len(error.markdown().encode()) < MAX_ERROR_BYTES
    assert len(error.message.encode()) < MAX_ERROR_BYTES


def test_page_internal_error_names_no_class() -> None:
    from service.ui.handlers import PageError, guard

    def broken() -> None:
        raise KeyError("internal")

    with pytest.raises(PageError) as caught:
        guard(broken)
    assert caught.value.status == 500 and not LEAKS.search(caught.value.message), caught.value.message
    assert "KeyError" not in caught.value.message


# -- gRPC over a real socket ------------------------------------------------------------------------

_GRPC_SERVICE = "/inference.GRPCInferenceService/"


@pytest.fixture(scope="module")
def grpc_server() -> Iterator[tuple[LiveServer, grpc.Channel]]:
    port = free_port()
    limits = {"max_body_bytes": BODY_LIMIT, "max_json_bytes": BODY_LIMIT}
    with live_server_process({"POOLSERVE_GRPC_PORT": str(port), **HEADLESS}, limits=limits) as live:
        # The client takes large status details, so that the size measured is the server's choice.
        options = [("grpc.max_metadata_size", 16 << 20), ("grpc.max_send_message_length", BODY_LIMIT)]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            yield live, channel


def _grpc_error(channel: grpc.Channel, rpc: str, body: bytes) -> grpc.RpcError:
    call = channel.unary_unary(_GRPC_SERVICE + rpc)  # raw bytes both ways
    with pytest.raises(grpc.RpcError) as caught:
        call(body, timeout=60)
    return caught.value


def _infer(**changes: Any) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="avg")
    request.parameters["kernel_size"].int64_param = 2
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(X.shape))
    request.raw_input_contents.append(X.tobytes())
    for key, value in changes.items():
        if key == "datatype":
            tensor.datatype = value
        elif key == "output":
            request.outputs.add(name=value)
        elif key == "inputs":
            for i in range(value):
                request.inputs.add(name=f"in{i}" + "n" * 100, datatype="FP32", shape=[1])
        elif key == "model_name":
            request.model_name = value
        else:  # a string parameter
            request.parameters[key].string_param = value
    return request


def _unknown_parameters() -> service_pb2.ModelInferRequest:
    request = _infer()
    for name in UNKNOWN:
        request.parameters[name].int64_param = 1
    return request


GRPC_CASES: dict[str, tuple[str, Any, grpc.StatusCode, str]] = {
    "model name 60 KB": (
        "ModelInfer",
        lambda: _infer(model_name="m" * 60_000),
        grpc.StatusCode.NOT_FOUND,
        "unknown model",
    ),
    "metadata model name 60 KB": (
        "ModelMetadata",
        lambda: service_pb2.ModelMetadataRequest(name="m" * 60_000, version="1"),
        grpc.StatusCode.NOT_FOUND,
        "unknown model",
    ),
    "datatype 1 MB": (
        "ModelInfer",
        lambda: _infer(datatype=BIG),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unsupported datatype",
    ),
    "output name 1 MB": (
        "ModelInfer",
        lambda: _infer(output=BIG),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown output",
    ),
    "many inputs": (
        "ModelInfer",
        lambda: _infer(inputs=10_000),
        grpc.StatusCode.INVALID_ARGUMENT,
        "one input tensor (got 10001",
    ),
    "mode 1 MB": ("ModelInfer", lambda: _infer(mode=BIG), grpc.StatusCode.INVALID_ARGUMENT, "mode must be"),
    "seed 1 MB": ("ModelInfer", lambda: _infer(seed=BIG), grpc.StatusCode.INVALID_ARGUMENT, "seed must be"),
    "unknown parameters 3.3 MB": (
        "ModelInfer",
        _unknown_parameters,
        grpc.StatusCode.INVALID_ARGUMENT,
        "100000 unknown parameters",
    ),
}


@pytest.mark.parametrize("name", list(GRPC_CASES))
def test_grpc_status_details_are_small(grpc_server: tuple[LiveServer, grpc.Channel], name: str) -> None:
    rpc, request, code, fragment = GRPC_CASES[name]
    error = _grpc_error(grpc_server[1], rpc, request().SerializeToString())
    assert error.code() == code, error.details()[:300]
    details = error.details()
    assert len(details.encode()) < MAX_ERROR_BYTES, f"{len(details.encode())} bytes"
    assert fragment in details and _long_run(details) <= 64 and not LEAKS.search(details), details[:300]


@pytest.mark.parametrize("rpc", ["ModelInfer", "ModelMetadata", "ServerLive"])
def test_grpc_non_protobuf_body(grpc_server: tuple[LiveServer, grpc.Channel], rpc: str) -> None:
    error = _grpc_error(grpc_server[1], rpc, b"\xff" * 64)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    details = error.details()
    assert "protobuf" in details and not LEAKS.search(details), details
    assert "pb2" not in details and "DecodeError" not in details
