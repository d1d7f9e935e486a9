"""Issue 17, finding 5: POOLSERVE_MAX_RESPONSE_BYTES refuses an answer that would be over it with 413,
decided from the output's shape, dtype and encoding before anything is encoded, on /pool and /v2.

The bounds are checked against what the codecs really write (random outputs, seeded: the longest numbers
and incompressible PNGs); each route is tested at the limit and one byte past it.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import orjson
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.codecs import image, json, npy
from service.errors import PayloadTooLarge
from service.limits import RESPONSE_FRAMING, WorkLimits, check_response, response_bytes

from .support import headless_settings, npy_bytes

RNG = np.random.default_rng(17)


def _random_output(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Values of every magnitude and sign: the longest numbers orjson writes come from these."""
    mantissa = RNG.uniform(-1, 1, shape)
    exponent = RNG.integers(-30, 30, shape)
    return torch.from_numpy(mantissa * 10.0**exponent).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 1, 4, 3), (1, 1, 1, 1, 9)])
def test_the_json_bound_holds_and_is_close(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    output = _random_output(shape, dtype)
    params = {"kernel_size": 2, "mode": "eval", "seed": None}
    written = len(json.encode(output, "avg", params).body)
    bound = response_bytes(shape, dtype, "json", json.header(output, "avg", params))
    assert bound is not None and written <= bound <= 2 * written + 64


def test_the_json_bound_holds_for_the_longest_numbers() -> None:
    longest = {
        torch.float32: [-0.0000012345679, -3.4028235e38, -1.1754944e-38, -1e-45],
        torch.float64: [-2.2250738585072014e-308, -0.0000012345678901234567, -1.7976931348623157e308],
    }
    for dtype, values in longest.items():
        output = torch.tensor(values, dtype=dtype)
        bound = response_bytes(tuple(output.shape), dtype, "json_flat")
        assert bound is not None
        assert len(orjson.dumps(output.numpy(), option=orjson.OPT_SERIALIZE_NUMPY)) <= bound


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_the_npy_size_is_exact(dtype: torch.dtype) -> None:
    output = _random_output((2, 3, 5), torch.float64).to(dtype)
    assert response_bytes((2, 3, 5), dtype, "npy") == len(npy.encode(output).body)


@pytest.mark.parametrize("shape", [(1, 300, 257), (3, 64, 640), (4, 129, 65), (40, 33)])
def test_the_png_bound_holds_for_incompressible_images(shape: tuple[int, ...]) -> None:
    output = torch.from_numpy(RNG.random(shape, dtype=np.float32))
    written = len(image.encode(output).body)
    bound = response_bytes(shape, torch.float32, "png")
    assert bound is not None and written <= bound <= written * 1.01 + 1024
    assert response_bytes((2, 3, 4, 4), torch.float32, "png") is None  # no image: the codec's own 406


def test_check_response_names_the_limit_and_suggests_npy() -> None:
    output = torch.zeros(10, 10)
    exact = response_bytes((10, 10), torch.float32, "npy")
    assert exact is not None
    check_response(output, "npy", WorkLimits(max_response_bytes=exact))
    with pytest.raises(PayloadTooLarge, match=rf"over the limit of {exact - 1} bytes .*larger window"):
        check_response(output, "npy", WorkLimits(max_response_bytes=exact - 1))
    with pytest.raises(PayloadTooLarge, match=r"POOLSERVE_MAX_RESPONSE_BYTES\); ask for .npy"):
        check_response(output, "json", WorkLimits(max_response_bytes=100))


# ---- the routes, at the limit and one byte past it ------------------------------------------------------

X = RNG.random((1, 3, 8, 8), dtype=np.float32)
POOLED = (1, 3, 4, 4)  # X under avg, kernel 2


def _client(limit: int) -> TestClient:
    return TestClient(create_app(headless_settings(max_response_bytes=limit)))


def _pool_bound(kind: str) -> int:
    """What the route will reckon for avg with kernel 2 over X."""
    output = torch.zeros(POOLED)
    if kind == "json":
        with _client(1 << 30) as client:  # the resolved parameters, as the answer reports them
            params = client.post("/pool/avg", json={"data": X.tolist(), "params": {"kernel_size": 2}}).json()[
                "params"
            ]
        bound = response_bytes(POOLED, torch.float32, "json", json.header(output, "avg", params))
    else:
        bound = response_bytes(POOLED, torch.float32, kind)  # type: ignore[arg-type]
    assert bound is not None
    return bound


@pytest.mark.parametrize(("accept", "kind"), [("application/json", "json"), ("application/x-npy", "npy")])
def test_pool_answers_at_the_limit_and_refuses_one_byte_less(accept: str, kind: str) -> None:
    bound = _pool_bound(kind)
    body = npy_bytes(X)
    headers = {"content-type": "application/x-npy", "accept": accept}
    with _client(bound) as client:
        response = client.post("/pool/avg?kernel_size=2", content=body, headers=headers)
        assert response.status_code == 200, response.text
        assert len(response.content) <= bound
    with _client(bound - 1) as client:
        response = client.post("/pool/avg?kernel_size=2", content=body, headers=headers)
        assert response.status_code == 413, response.text
        detail = response.json()["detail"]
        assert f"over the limit of {bound - 1} bytes (POOLSERVE_MAX_RESPONSE_BYTES)" in detail
        assert "larger window" in detail and (kind == "npy" or ".npy" in detail)


def test_pool_png_answers_at_the_limit_and_refuses_one_byte_less() -> None:
    picture = io.BytesIO()
    Image.fromarray((X[0].transpose(1, 2, 0) * 255).astype(np.uint8)).save(picture, format="PNG")
    bound = response_bytes((3, 4, 4), torch.float32, "png")
    assert bound is not None
    headers = {"content-type": "image/png"}
    with _client(bound) as client:
        assert (
            client.post("/pool/avg?kernel_size=2", content=picture.getvalue(), headers=headers).status_code
            == 200
        )
    with _client(bound - 1) as client:
        response = client.post("/pool/avg?kernel_size=2", content=picture.getvalue(), headers=headers)
        assert response.status_code == 413 and "of PNG" in response.json()["detail"]


def _v2_body(binary: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "r1",
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": list(X.shape), "data": X.reshape(-1).tolist()}
        ],
        "parameters": {"kernel_size": 2},
    }
    if binary:
        body["outputs"] = [{"name": "output", "parameters": {"binary_data": True}}]
    return body


@pytest.mark.parametrize("binary", [False, True])
def test_v2_answers_at_the_limit_and_refuses_one_byte_less(binary: bool) -> None:
    with _client(1 << 30) as client:
        reported = client.post("/v2/models/avg/infer", json=_v2_body(False)).json()["parameters"]
    rest = {"id": "r1", "parameters": reported}
    encoding = "raw" if binary else "json_flat"
    bound = response_bytes(POOLED, torch.float32, encoding, rest)  # type: ignore[arg-type]
    assert bound is not None
    bound += RESPONSE_FRAMING
    with _client(bound) as client:
        response = client.post("/v2/models/avg/infer", json=_v2_body(binary))
        assert response.status_code == 200, response.text
        assert len(response.content) <= bound
    with _client(bound - 1) as client:
        response = client.post("/v2/models/avg/infer", json=_v2_body(binary))
        assert response.status_code == 413, response.text
        assert "POOLSERVE_MAX_RESPONSE_BYTES" in response.json()["error"]


def test_methods_lists_the_response_and_scan_limits() -> None:
    with _client(12345) as client:
        limits = client.get("/methods").json()["limits"]
    assert limits["max_response_bytes"] == 12345 and limits["max_jpeg_scans"] == 64
