"""The Open Inference Protocol's REST routes (/v2) in process: discovery, infer for every method in JSON and
with the binary tensor extension both ways, datatypes, parameters, seeds, and the edge cases as raw bodies
(the real clients, tritonclient over HTTP and gRPC, are in tests/service/test_grpc.py)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest
import torch
from fastapi.testclient import TestClient

import poolcore
from service.app import create_app

from ..support import (
    LIMITS,
    default_params,
    headless_settings,
    npy_bytes,
    query_string,
    reference,
    test_settings,
)

METHODS = poolcore.methods()
RNG = np.random.default_rng(1111)
X = RNG.uniform(0.1, 1.0, (1, 3, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(headless_settings())) as c:
        yield c


def _request(x: np.ndarray, datatype: str = "FP32", **extra: Any) -> dict[str, Any]:
    tensor = {"name": "input", "datatype": datatype, "shape": list(x.shape), "data": x.ravel().tolist()}
    return {"inputs": [tensor], **extra}


def _binary_request(
    x: np.ndarray, datatype: str = "FP32", *, binary_output: bool = True, **extra: Any
) -> tuple[bytes, dict[str, str]]:
    """A binary-extension body: the JSON header, then the tensor's raw little-endian bytes."""
    raw = np.ascontiguousarray(x).astype(x.dtype.newbyteorder("<")).tobytes()
    tensor = {
        "name": "input",
        "datatype": datatype,
        "shape": list(x.shape),
        "parameters": {"binary_data_size": len(raw)},
    }
    outputs = [{"name": "output", "parameters": {"binary_data": binary_output}}]
    header = orjson.dumps({"inputs": [tensor], "outputs": outputs, **extra})
    return header + raw, {"inference-header-content-length": str(len(header))}


def _output(response: Any) -> tuple[dict[str, Any], np.ndarray]:
    """The response's JSON document and its output tensor, from JSON data or binary data."""
    assert response.status_code == 200, response.text
    length = response.headers.get("inference-header-content-length")
    if length is None:
        assert response.headers["content-type"] == "application/json"
        doc = response.json()
        out = doc["outputs"][0]
        dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}[out["datatype"]]
        return doc, np.asarray(out["data"], dtype=dtype).reshape(out["shape"])
    assert response.headers["content-type"] == "application/octet-stream"
    doc = orjson.loads(response.content[: int(length)])
    out = doc["outputs"][0]
    little = {"FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}[out["datatype"]]
    data = response.content[int(length) :]
    assert len(data) == out["parameters"]["binary_data_size"]
    return doc, np.frombuffer(data, dtype=little).reshape(out["shape"])


def _error(response: Any, status: int) -> str:
    """The protocol's error: ``{"error": "<message>"}`` and nothing else."""
    assert response.status_code == status, response.text
    doc = response.json()
    assert list(doc) == ["error"] and isinstance(doc["error"], str)
    return str(doc["error"])


class TestDiscovery:
    def test_server_metadata(self, client: TestClient) -> None:
        doc = client.get("/v2").json()
        assert doc["name"] == "poolserve" and doc["version"]
        assert "binary_tensor_data" in doc["extensions"]

    def test_health(self, client: TestClient) -> None:
        assert client.get("/v2/health/live").json() == {"live": True}
        r = client.get("/v2/health/ready")
        assert r.status_code == 200 and r.json() == {"ready": True}

    def test_ready_follows_drain(self) -> None:
        app = create_app(headless_settings())
        with TestClient(app) as c:
            app.state.draining = True  # what DrainingServer sets on SIGTERM
            assert c.get("/v2/health/ready").status_code == 503
            r = c.get("/v2/models/avg/ready")
            assert r.status_code == 503 and r.json() == {"name": "avg", "ready": False}
            assert c.get("/v2/health/live").status_code == 200

    @pytest.mark.parametrize("name", [*METHODS, "power"])
    def test_model_metadata(self, client: TestClient, name: str) -> None:
        spec = poolcore.get_spec(name)
        for path in (f"/v2/models/{name}", f"/v2/models/{name}/versions/1"):
            doc = client.get(path).json()
            assert doc["name"] == spec.name and doc["versions"] == ["1"]
            (tensor,) = doc["inputs"]
            assert tensor["name"] == "input" and tensor["datatype"] == "FP32"
            assert tensor["shape"] == [-1, -1, -1, -1]
            assert doc["outputs"][0]["name"] == "output"
            accepted = doc["properties"]["input_datatypes"].split(",")
            assert accepted == ["FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8"]
        ready = client.get(f"/v2/models/{name}/ready")
        assert ready.status_code == 200 and ready.json() == {"name": spec.name, "ready": True}
        assert client.get(f"/v2/models/{name}/versions/1/ready").status_code == 200

    def test_unknown_model_and_version(self, client: TestClient) -> None:
        for path in ("/v2/models/median", "/v2/models/median/ready"):
            message = _error(client.get(path), 404)
            assert "unknown model 'median'" in message and "avg" in message
        assert "no version '2'" in _error(client.get("/v2/models/avg/versions/2"), 404)
        assert "no version '2'" in _error(client.get("/v2/models/avg/versions/2/ready"), 404)
        r = client.post("/v2/models/avg/versions/2/infer", json=_request(X))
        assert "no version '2'" in _error(r, 404)

    def test_api_keys_leave_health_open(self) -> None:
        key = "k1-0123456789abcdef"
        with TestClient(create_app(headless_settings(api_keys=key))) as c:
            assert c.get("/v2/health/live").status_code == 200
            assert c.get("/v2/health/ready").status_code == 200
            for path in ("/v2", "/v2/models/avg", "/v2/models/avg/ready"):
                assert "API key" in _error(c.get(path), 401)
            body = {**_request(X), "parameters": {"kernel_size": 2}}
            assert "API key" in _error(c.post("/v2/models/avg/infer", json=body), 401)
            r = c.post("/v2/models/avg/infer", json=body, headers={"authorization": f"Bearer {key}"})
            assert r.status_code == 200


def test_metrics_label_the_protocol_routes(client: TestClient) -> None:
    client.get("/v2/models/avg/ready")
    client.post("/v2/models/avg/infer", json=_request(X, parameters={"kernel_size": 2}))
    client.post("/v2/models/nope/infer", json=_request(X))
    text = client.get("/metrics").text
    assert 'poolserve_requests_total{method="avg",route="/v2/models/{name}/infer",status="200"}' in text
    assert 'poolserve_requests_total{method="",route="/v2/models/{name}/infer",status="404"}' in text
    assert 'route="/v2/models/{name}/ready",status="200"' in text
    assert 'poolserve_pool_seconds_count{method="avg"}' in text


class TestInfer:
    @pytest.mark.parametrize("method", METHODS)
    def test_json_every_method(self, client: TestClient, method: str) -> None:
        params = default_params(method)
        r = client.post(f"/v2/models/{method}/infer", json=_request(X, id="req-1", parameters=params))
        doc, out = _output(r)
        expected = reference(torch.from_numpy(X), method, params).numpy()
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
        assert doc["model_name"] == method and doc["model_version"] == "1" and doc["id"] == "req-1"
        assert doc["outputs"][0]["datatype"] == "FP32" and doc["outputs"][0]["shape"] == list(expected.shape)
        assert doc["parameters"]["mode"] == "eval" and "seed" not in doc["parameters"]

    @pytest.mark.parametrize("method", METHODS)
    def test_binary_every_method(self, client: TestClient, method: str) -> None:
        params = default_params(method)
        body, headers = _binary_request(X, parameters=query_string(params))
        r = client.post(f"/v2/models/{method}/infer", content=body, headers=headers)
        _, out = _output(r)
        np.testing.assert_array_equal(out, reference(torch.from_numpy(X), method, params).numpy())

    def test_binary_and_json_mixed(self, client: TestClient) -> None:
        expected = reference(torch.from_numpy(X), "max", {"kernel_size": 2}).numpy()
        # Binary in, JSON out.
        body, headers = _binary_request(X, binary_output=False, parameters={"kernel_size": 2})
        r = client.post("/v2/models/max/infer", content=body, headers=headers)
        assert "inference-header-content-length" not in r.headers
        np.testing.assert_array_equal(_output(r)[1], expected)
        # JSON in, binary out, asked for request-wide.
        doc = _request(X, parameters={"kernel_size": 2, "binary_data_output": True})
        r = client.post("/v2/models/max/infer", content=orjson.dumps(doc))
        assert "inference-header-content-length" in r.headers
        np.testing.assert_array_equal(_output(r)[1], expected)
        # An output's own binary_data overrides the request's.
        doc["outputs"] = [{"name": "output", "parameters": {"binary_data": False}}]
        r = client.post("/v2/models/max/infer", content=orjson.dumps(doc))
        assert r.headers["content-type"] == "application/json"

    def test_same_bytes_as_pool(self, client: TestClient) -> None:
        params = {"kernel_size": 3, "stride": 2, "p": 3.0}
        body, headers = _binary_request(X, parameters=params)
        _, out = _output(client.post("/v2/models/lp/infer", content=body, headers=headers))
        pool = client.post(
            "/pool/lp",
            params=query_string(params),
            content=npy_bytes(X),
            headers={"content-type": "application/x-npy"},
        )
        assert out.tobytes() == np.load(io.BytesIO(pool.content)).tobytes()

    @pytest.mark.parametrize("datatype", ["FP16", "FP64"])
    def test_float_datatypes_keep_their_type(self, client: TestClient, datatype: str) -> None:
        x = X.astype({"FP16": np.float16, "FP64": np.float64}[datatype])
        for body, headers in (
            _binary_request(x, datatype, parameters={"kernel_size": 2}),
            (orjson.dumps(_request(x, datatype, parameters={"kernel_size": 2})), {}),
        ):
            doc, out = _output(client.post("/v2/models/avg/infer", content=body, headers=headers))
            assert doc["outputs"][0]["datatype"] == datatype
            expected = reference(torch.from_numpy(x), "avg", {"kernel_size": 2}).numpy()
            np.testing.assert_allclose(out.astype(np.float64), expected.astype(np.float64), rtol=1e-3)

    @pytest.mark.parametrize("datatype", ["INT8", "INT16", "INT32", "INT64", "UINT8"])
    def test_integers_pool_as_float32(self, client: TestClient, datatype: str) -> None:
        dtype = {"INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64}.get(
            datatype, np.uint8
        )
        x = RNG.integers(0, 100, (1, 2, 4, 4)).astype(dtype)
        expected = reference(torch.from_numpy(x.astype(np.float32)), "avg", {"kernel_size": 2}).numpy()
        for body, headers in (
            _binary_request(x, datatype, parameters={"kernel_size": 2}),
            (orjson.dumps(_request(x, datatype, parameters={"kernel_size": 2})), {}),
        ):
            doc, out = _output(client.post("/v2/models/avg/infer", content=body, headers=headers))
            assert doc["outputs"][0]["datatype"] == "FP32"
            np.testing.assert_array_equal(out, expected)

    def test_tuples_as_arrays_or_strings(self, client: TestClient) -> None:
        x = RNG.uniform(0, 1, (1, 2, 6, 9)).astype(np.float32)
        expected = reference(torch.from_numpy(x), "max", {"kernel_size": (2, 3)}).numpy()
        for value in ([2, 3], "2,3", " 2, 3 "):
            doc, out = _output(
                client.post("/v2/models/max/infer", json=_request(x, parameters={"kernel_size": value}))
            )
            np.testing.assert_array_equal(out, expected)
            assert doc["parameters"]["kernel_size"] == "2,3"  # tuples go back as protocol scalars
        adaptive = reference(torch.from_numpy(x), "adaptive_avg", {"output_size": (None, 3)}).numpy()
        r = client.post(
            "/v2/models/adaptive_avg/infer", json=_request(x, parameters={"output_size": "null,3"})
        )
        np.testing.assert_allclose(_output(r)[1], adaptive, rtol=1e-6)

    def test_nested_data(self, client: TestClient) -> None:
        doc = _request(X, parameters={"kernel_size": 2})
        doc["inputs"][0]["data"] = X.tolist()
        _, out = _output(client.post("/v2/models/avg/infer", json=doc))
        np.testing.assert_allclose(out, reference(torch.from_numpy(X), "avg", {"kernel_size": 2}), rtol=1e-6)

    @pytest.mark.parametrize("method", [m for m in METHODS if poolcore.get_spec(m).random])
    def test_seed_is_returned_and_reproduces(self, client: TestClient, method: str) -> None:
        params = {**default_params(method), "mode": "train"}
        body, headers = _binary_request(X, parameters=params)
        doc, first = _output(client.post(f"/v2/models/{method}/infer", content=body, headers=headers))
        seed = doc["parameters"]["seed"]
        assert isinstance(seed, int) and doc["parameters"]["mode"] == "train"
        expected = reference(torch.from_numpy(X), method, default_params(method), seed=seed).numpy()
        np.testing.assert_array_equal(first, expected)
        # The seed as a string, as gRPC clients may send it, gives the same bytes again.
        body, headers = _binary_request(X, parameters={**params, "seed": str(seed)})
        doc, again = _output(client.post(f"/v2/models/{method}/infer", content=body, headers=headers))
        assert doc["parameters"]["seed"] == seed and again.tobytes() == first.tobytes()


class TestErrors:
    """Edge cases as raw bodies, with no Content-Type, as tritonclient sends them."""

    def _post(self, client: TestClient, body: bytes, headers: dict[str, str] | None = None) -> Any:
        return client.post("/v2/models/avg/infer", content=body, headers=headers or {})

    def test_header_length_larger_than_body(self, client: TestClient) -> None:
        body, _ = _binary_request(X)
        r = self._post(client, body, {"inference-header-content-length": str(len(body) + 1)})
        message = _error(r, 400)
        assert f"{len(body) + 1} bytes is larger than the body ({len(body)} bytes)" in message

    def test_header_length_not_a_number(self, client: TestClient) -> None:
        body, _ = _binary_request(X)
        message = _error(self._post(client, body, {"inference-header-content-length": "-5"}), 400)
        assert "Inference-Header-Content-Length" in message and "'-5'" in message

    def test_binary_data_size_against_shape(self, client: TestClient) -> None:
        raw = X.tobytes()[:-4]  # one float short of shape × FP32
        tensor: dict[str, Any] = {"name": "input", "datatype": "FP32", "shape": [1, 3, 8, 8]}
        tensor["parameters"] = {"binary_data_size": len(raw)}
        header = orjson.dumps({"inputs": [tensor]})
        r = self._post(client, header + raw, {"inference-header-content-length": str(len(header))})
        message = _error(r, 400)
        assert f"{len(raw)} bytes of data" in message and f"needs {X.nbytes} bytes" in message

    def test_binary_data_size_against_body(self, client: TestClient) -> None:
        body, headers = _binary_request(X)
        message = _error(self._post(client, body + b"\0\0\0\0", headers), 400)
        assert f"binary_data_size is {X.nbytes} bytes, but {X.nbytes + 4} bytes follow" in message

    @pytest.mark.parametrize("datatype", ["BF16", "BYTES", "BOOL", "UINT16", "fp32", 7])
    def test_unknown_datatype(self, client: TestClient, datatype: Any) -> None:
        doc = _request(X)
        doc["inputs"][0]["datatype"] = datatype
        message = _error(self._post(client, orjson.dumps(doc)), 400)
        assert f"unsupported datatype {datatype!r}" in message and "FP32" in message

    def test_two_inputs(self, client: TestClient) -> None:
        doc = _request(X)
        doc["inputs"].append({**doc["inputs"][0], "name": "second"})
        message = _error(self._post(client, orjson.dumps(doc)), 400)
        assert "one input tensor (got 2: 'input', 'second')" in message

    @pytest.mark.parametrize("doc", [{}, {"inputs": []}, {"inputs": None}, {"id": "x"}])
    def test_missing_inputs(self, client: TestClient, doc: dict[str, Any]) -> None:
        assert '"inputs"' in _error(self._post(client, orjson.dumps(doc)), 400)

    @pytest.mark.parametrize(
        ("body", "fragment"),
        [
            (b"{not json", "malformed JSON"),
            (b"[1, 2]", "must be a JSON object"),
            (
                orjson.dumps({"inputs": [{"name": "i", "datatype": "FP32", "shape": [2, 2]}]}),
                'neither "data"',
            ),
            (orjson.dumps(_request(X, id=5)), '"id" must be a string'),
            (orjson.dumps(_request(X, outputs=[{"name": "logits"}])), "unknown output 'logits'"),
            (orjson.dumps(_request(X, parameters=[1])), '"parameters" must be an object'),
        ],
    )
    def test_malformed_requests(self, client: TestClient, body: bytes, fragment: str) -> None:
        assert fragment in _error(self._post(client, body), 400)

    def test_data_against_shape(self, client: TestClient) -> None:
        doc = _request(X)
        doc["inputs"][0]["shape"] = [2, 2]
        message = _error(self._post(client, orjson.dumps(doc)), 400)
        assert "has 192 values, but shape [2, 2] needs 4" in message

    @pytest.mark.parametrize("shape", [[], [1, 1, 1, 1, 1, 1], [-1, 4], [2.0, 2], "2,2"])
    def test_bad_shape(self, client: TestClient, shape: Any) -> None:
        doc = _request(X)
        doc["inputs"][0]["shape"] = shape
        assert "shape" in _error(self._post(client, orjson.dumps(doc)), 400)

    def test_parameters_poolcore_refuses_are_400(self, client: TestClient) -> None:
        message = _error(self._post(client, orjson.dumps(_request(X, parameters={"kernel_size": 0}))), 400)
        assert "kernel_size" in message
        message = _error(self._post(client, orjson.dumps(_request(X, parameters={"kernel": 2}))), 400)
        assert "kernel" in message

    def test_element_limit_before_allocating(self, client: TestClient) -> None:
        # A shape over the element limit with almost no data: refused from the shape (413), not from data.
        doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1 << 20, 1 << 20], "data": [1.0]}]}
        message = _error(self._post(client, orjson.dumps(doc)), 413)
        assert f"over the limit of {LIMITS['max_elements']}" in message
        tensor = {
            "name": "input",
            "datatype": "FP64",
            "shape": [1 << 40],
            "parameters": {"binary_data_size": 8},
        }
        header = orjson.dumps({"inputs": [tensor]})
        r = self._post(client, header + bytes(8), {"inference-header-content-length": str(len(header))})
        assert "over the limit" in _error(r, 413)

    def test_output_size_and_work_limits_are_the_settings(self) -> None:
        """The /pool limits from the app's settings, not the service's defaults: output size and work."""
        x = np.ones((1, 1, 8, 8), dtype=np.float32)
        with TestClient(create_app(headless_settings(max_elements=4096, max_work=1000))) as c:
            doc = _request(x, parameters={"output_size": "100,100"})
            message = _error(c.post("/v2/models/adaptive_avg/infer", content=orjson.dumps(doc)), 413)
            assert "output would have 10000 elements" in message and "limit of 4096" in message
            doc = _request(x, parameters={"kernel_size": 4, "stride": 1})  # 25 outputs × 16 = 400 visits
            assert c.post("/v2/models/avg/infer", content=orjson.dumps(doc)).status_code == 200
            doc = _request(x, parameters={"kernel_size": 2, "stride": 1})  # 49 × 4 × 20 = 3920 for gem
            assert "POOLSERVE_MAX_WORK" in _error(
                c.post("/v2/models/gem/infer", content=orjson.dumps(doc)), 413
            )

    def test_body_limits(self) -> None:
        settings = test_settings(max_json_bytes=2048)
        with TestClient(create_app(settings)) as c:
            doc = orjson.dumps(_request(X))  # about 3.7 KB of numbers: over the JSON limit
            assert len(doc) > 2048
            assert "limit of 2048 bytes" in _error(c.post("/v2/models/avg/infer", content=doc), 413)
            # Binary data is under the service-wide limit, not the JSON one: the same tensor passes.
            body, headers = _binary_request(X, parameters={"kernel_size": 2})
            assert c.post("/v2/models/avg/infer", content=body, headers=headers).status_code == 200
            big = bytes(LIMITS["max_body_bytes"] + 1)
            r = c.post("/v2/models/avg/infer", content=big, headers={"inference-header-content-length": "2"})
            assert "over the limit" in _error(r, 413)
