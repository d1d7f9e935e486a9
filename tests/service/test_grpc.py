"""The Open Inference Protocol against a real server (``poolserve`` in a subprocess, HTTP and gRPC on free
loopback ports, API keys on), driven by Triton's own clients: tritonclient over gRPC and over HTTP, for every
method, compared with poolcore called directly.

One server for the module (starting one costs seconds); its last test shuts it down, with RPCs in flight.
The kserve SDK's clients are not used: kserve 0.21 needs pandas < 3 and psutil < 6, which would replace the
pandas 3 that gradio runs on here (see the README's protocol section).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import torch
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

import poolcore

from .support import (
    HEADLESS,
    LiveServer,
    default_params,
    free_port,
    live_server_process,
    query_string,
    reference,
)

METHODS = poolcore.methods()
KEY = "k-test-0123456789"
HEADERS = {"authorization": f"Bearer {KEY}"}
MAX_BODY = 20 * 1024 * 1024
MAX_ELEMENTS = 1 << 22
RNG = np.random.default_rng(2222)
X = RNG.uniform(0.1, 1.0, (1, 3, 8, 8)).astype(np.float32)


def _auth() -> dict[str, str]:
    """A fresh headers dict per call: tritonclient's HTTP infer adds Inference-Header-Content-Length to
    the dict it is given, which would then go stale on the next request."""
    return dict(HEADERS)


def _free_port() -> int:
    return free_port()


class Server:
    def __init__(self, live: LiveServer, grpc_port: int) -> None:
        self.live = live
        self.http_url = live.url.removeprefix("http://")
        self.grpc_url = f"127.0.0.1:{grpc_port}"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    port = _free_port()
    env = {"POOLSERVE_GRPC_PORT": str(port), "POOLSERVE_API_KEYS": KEY, **HEADLESS}
    limits = {"max_body_bytes": MAX_BODY, "max_elements": MAX_ELEMENTS, "max_image_pixels": 1 << 16}
    with live_server_process(env, limits=limits) as live:
        yield Server(live, port)


@pytest.fixture(scope="module")
def grpc_client(server: Server) -> Iterator[triton_grpc.InferenceServerClient]:
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def http_client(server: Server) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(server.http_url)
    yield client
    client.close()


def _grpc_input(x: np.ndarray, datatype: str = "FP32") -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("input", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)  # raw_input_contents
    return tensor


def _http_input(x: np.ndarray, binary: bool) -> triton_http.InferInput:
    tensor = triton_http.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


class TestHealthAndMetadata:
    def test_live_and_ready_need_no_key(
        self, grpc_client: triton_grpc.InferenceServerClient, http_client: triton_http.InferenceServerClient
    ) -> None:
        assert grpc_client.is_server_live() and grpc_client.is_server_ready()
        assert http_client.is_server_live() and http_client.is_server_ready()

    @pytest.mark.parametrize("name", [*METHODS, "power"])
    def test_model_ready(
        self,
        grpc_client: triton_grpc.InferenceServerClient,
        http_client: triton_http.InferenceServerClient,
        name: str,
    ) -> None:
        assert grpc_client.is_model_ready(name, headers=_auth())
        assert grpc_client.is_model_ready(name, "1", headers=_auth())
        assert http_client.is_model_ready(name, headers=_auth())
        assert http_client.is_model_ready(name, "1", headers=_auth())

    def test_server_metadata(
        self, grpc_client: triton_grpc.InferenceServerClient, http_client: triton_http.InferenceServerClient
    ) -> None:
        for doc in (
            grpc_client.get_server_metadata(headers=_auth(), as_json=True),
            http_client.get_server_metadata(headers=_auth()),
        ):
            assert doc["name"] == "poolserve" and "binary_tensor_data" in doc["extensions"]

    @pytest.mark.parametrize("name", METHODS)
    def test_model_metadata(
        self,
        grpc_client: triton_grpc.InferenceServerClient,
        http_client: triton_http.InferenceServerClient,
        name: str,
    ) -> None:
        from_grpc = grpc_client.get_model_metadata(name, headers=_auth(), as_json=True)
        from_http = http_client.get_model_metadata(name, headers=_auth())
        for doc in (from_grpc, from_http):
            assert doc["name"] == name and doc["versions"] == ["1"] and doc["platform"] == "pytorch"
            assert doc["inputs"][0]["name"] == "input" and doc["inputs"][0]["datatype"] == "FP32"
            assert [int(s) for s in doc["inputs"][0]["shape"]] == [-1, -1, -1, -1]
            assert doc["outputs"][0]["name"] == "output"
        # tritonclient's proto has no ModelMetadataResponse.properties: the REST document carries them.
        assert "INT8" in from_http["properties"]["input_datatypes"]


class TestInfer:
    @pytest.mark.parametrize("method", METHODS)
    def test_every_method_both_protocols(
        self,
        grpc_client: triton_grpc.InferenceServerClient,
        http_client: triton_http.InferenceServerClient,
        method: str,
    ) -> None:
        params = default_params(method)
        text = query_string(params)  # protocol parameters are scalars: tuples as "2,2"
        expected = reference(torch.from_numpy(X), method, params).numpy()
        result = grpc_client.infer(
            method, [_grpc_input(X)], request_id="g-1", parameters=text, headers=_auth()
        )
        np.testing.assert_array_equal(result.as_numpy("output"), expected)
        response = result.get_response(as_json=True)
        assert response["id"] == "g-1" and response["model_name"] == method
        for binary_in in (True, False):
            for binary_out in (True, False):
                result = http_client.infer(
                    method,
                    [_http_input(X, binary_in)],
                    outputs=[triton_http.InferRequestedOutput("output", binary_data=binary_out)],
                    request_id="h-1",
                    parameters=text,
                    headers=_auth(),
                )
                out = result.as_numpy("output")
                if binary_out:
                    np.testing.assert_array_equal(out, expected)
                else:
                    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
                assert result.get_response()["id"] == "h-1"

    @pytest.mark.parametrize("method", METHODS)
    def test_contents_every_method(self, server: Server, method: str) -> None:
        """``contents`` (numbers in the message) instead of raw bytes, through tritonclient's own stubs."""
        params = default_params(method)
        request = service_pb2.ModelInferRequest(model_name=method)
        tensor = request.inputs.add(name="input", datatype="FP32", shape=list(X.shape))
        tensor.contents.fp32_contents.extend(X.ravel().tolist())
        for key, value in query_string(params).items():
            request.parameters[key].string_param = value
        with grpc.insecure_channel(server.grpc_url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            response = stub.ModelInfer(request, metadata=tuple(HEADERS.items()))
        (raw,) = response.raw_output_contents
        out = np.frombuffer(raw, "<f4").reshape(list(response.outputs[0].shape))
        np.testing.assert_array_equal(out, reference(torch.from_numpy(X), method, params).numpy())

    def test_integers_and_fp16(self, grpc_client: triton_grpc.InferenceServerClient) -> None:
        ints = RNG.integers(0, 200, (1, 2, 4, 4)).astype(np.uint8)
        result = grpc_client.infer(
            "max", [_grpc_input(ints, "UINT8")], parameters={"kernel_size": 2}, headers=_auth()
        )
        expected = reference(torch.from_numpy(ints.astype(np.float32)), "max", {"kernel_size": 2})
        np.testing.assert_array_equal(result.as_numpy("output"), expected.numpy())
        half = X.astype(np.float16)
        result = grpc_client.infer(
            "avg", [_grpc_input(half, "FP16")], parameters={"kernel_size": 2}, headers=_auth()
        )
        out = result.as_numpy("output")
        assert out.dtype == np.float16
        np.testing.assert_array_equal(
            out, reference(torch.from_numpy(half), "avg", {"kernel_size": 2}).numpy()
        )

    def test_float_parameter_and_seed(self, grpc_client: triton_grpc.InferenceServerClient) -> None:
        # A float goes as double_param: in the OIP proto (and Triton's), not in KServe's older one.
        params = {"kernel_size": 2, "p": 2.5}
        result = grpc_client.infer("lp", [_grpc_input(X)], parameters=params, headers=_auth())
        np.testing.assert_allclose(
            result.as_numpy("output"), reference(torch.from_numpy(X), "lp", params).numpy(), rtol=1e-6
        )
        result = grpc_client.infer(
            "stochastic",
            [_grpc_input(X)],
            parameters={"kernel_size": 2, "mode": "train"},
            headers=_auth(),
        )
        seed = int(result.get_response(as_json=True)["parameters"]["seed"]["int64_param"])
        expected = reference(torch.from_numpy(X), "stochastic", {"kernel_size": 2}, seed=seed)
        np.testing.assert_array_equal(result.as_numpy("output"), expected.numpy())


class TestErrors:
    def _grpc_error(self, call: Any) -> InferenceServerException:
        with pytest.raises(InferenceServerException) as caught:
            call()
        return caught.value

    def test_grpc_errors_carry_our_message(self, grpc_client: triton_grpc.InferenceServerClient) -> None:
        error = self._grpc_error(lambda: grpc_client.infer("median", [_grpc_input(X)], headers=_auth()))
        assert error.status() == "StatusCode.NOT_FOUND" and "unknown model 'median'" in error.message()
        error = self._grpc_error(
            lambda: grpc_client.infer("avg", [_grpc_input(X)], parameters={"kernel_size": 0}, headers=_auth())
        )
        assert error.status() == "StatusCode.INVALID_ARGUMENT" and "kernel_size" in error.message()
        two = [_grpc_input(X), triton_grpc.InferInput("second", [1], "FP32")]
        two[1].set_data_from_numpy(np.zeros(1, np.float32))
        error = self._grpc_error(lambda: grpc_client.infer("avg", two, headers=_auth()))
        assert "one input tensor (got 2: 'input', 'second')" in error.message()
        error = self._grpc_error(lambda: grpc_client.get_model_metadata("avg", "2", headers=_auth()))
        assert error.status() == "StatusCode.NOT_FOUND" and "no version '2'" in error.message()

    def test_grpc_api_keys(self, grpc_client: triton_grpc.InferenceServerClient) -> None:
        error = self._grpc_error(lambda: grpc_client.infer("avg", [_grpc_input(X)]))
        assert error.status() == "StatusCode.UNAUTHENTICATED" and "API key" in error.message()
        wrong = {"authorization": "Bearer not-the-key"}
        error = self._grpc_error(lambda: grpc_client.get_model_metadata("avg", headers=wrong))
        assert error.status() == "StatusCode.UNAUTHENTICATED" and error.message() == "invalid API key"
        error = self._grpc_error(lambda: grpc_client.get_server_metadata())
        assert error.status() == "StatusCode.UNAUTHENTICATED"

    def test_grpc_limits(self, grpc_client: triton_grpc.InferenceServerClient) -> None:
        over = np.zeros(MAX_ELEMENTS + 1, np.uint8)  # 4 MiB: under the message limit, over the elements
        error = self._grpc_error(
            lambda: grpc_client.infer(
                "avg", [_grpc_input(over, "UINT8")], parameters={"kernel_size": 2}, headers=_auth()
            )
        )
        assert error.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert f"over the limit of {MAX_ELEMENTS}" in error.message()
        huge = np.zeros(MAX_BODY + 1, np.uint8)  # over the message limit: refused by gRPC itself
        error = self._grpc_error(
            lambda: grpc_client.infer("avg", [_grpc_input(huge, "UINT8")], headers=_auth())
        )
        assert error.status() == "StatusCode.RESOURCE_EXHAUSTED"

    def test_http_errors_carry_our_message(self, http_client: triton_http.InferenceServerClient) -> None:
        with pytest.raises(InferenceServerException) as caught:
            http_client.infer("median", [_http_input(X, True)], headers=_auth())
        assert caught.value.status() == "404" and "unknown model 'median'" in caught.value.message()
        with pytest.raises(InferenceServerException) as caught:
            http_client.infer("avg", [_http_input(X, True)], parameters={"kernel_size": 0}, headers=_auth())
        assert caught.value.status() == "400" and "kernel_size" in caught.value.message()
        with pytest.raises(InferenceServerException) as caught:
            http_client.infer("avg", [_http_input(X, True)])
        assert caught.value.status() == "401" and "API key" in caught.value.message()

    def test_header_length_larger_than_body_over_the_wire(self, server: Server) -> None:
        body = b'{"inputs": []}'
        headers = {**HEADERS, "inference-header-content-length": "100"}
        r = httpx.post(
            f"{server.live.url}/v2/models/avg/infer", content=body, headers=headers, trust_env=False
        )
        message = f"Inference-Header-Content-Length of 100 bytes is larger than the body ({len(body)} bytes)"
        assert r.status_code == 400 and r.json() == {"error": message}


def test_metrics_count_grpc(server: Server, grpc_client: triton_grpc.InferenceServerClient) -> None:
    grpc_client.infer("avg", [_grpc_input(X)], parameters={"kernel_size": 2}, headers=_auth())
    text = httpx.get(f"{server.live.url}/metrics", headers=_auth(), trust_env=False).text
    route = "/inference.GRPCInferenceService/ModelInfer"
    assert f'poolserve_requests_total{{method="avg",route="{route}",status="200"}}' in text
    assert 'route="/inference.GRPCInferenceService/ModelInfer",status="401"' in text
    assert 'poolserve_pool_seconds_count{method="avg"}' in text


def test_shutdown_finishes_rpcs_in_flight(server: Server) -> None:
    """Last in the module: SIGTERM while RPCs are queued and running; every one answers, the process exits
    0, and the port closes."""
    x = RNG.uniform(0.1, 1.0, (1, 16, 256, 256)).astype(np.float32)
    params = {"kernel_size": 6, "stride": 1}  # stochastic, overlapping windows: about 0.3 s a request
    seeds = range(1, 9)  # more work than the worker threads can finish before the signal
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    results: dict[int, Any] = {}
    done = threading.Event()

    def callback(result: Any, error: Any) -> None:
        key = len(results) if error is not None else int(result.get_response().id)
        results[key] = error if error is not None else result
        if len(results) == len(seeds):
            done.set()

    for seed in seeds:
        client.async_infer(
            "stochastic",
            [_grpc_input(x)],
            callback,
            request_id=str(seed),
            parameters={**params, "mode": "train", "seed": seed},
            headers=_auth(),
        )
    time.sleep(0.3)  # the requests reach the server (4 MiB each over loopback)
    answered_before = len(results)
    server.live.process.send_signal(signal.SIGTERM)
    assert done.wait(60), "RPCs in flight got no answer"
    assert answered_before < len(seeds), "every request finished before the signal: make them slower"
    errors = [r for r in results.values() if isinstance(r, Exception)]
    assert not errors, errors
    for seed in (seeds[0], seeds[-1]):
        expected = reference(torch.from_numpy(x), "stochastic", params, seed=seed).numpy()
        np.testing.assert_array_equal(results[seed].as_numpy("output"), expected)
    assert server.live.process.wait(30) == 0
    with pytest.raises(InferenceServerException):
        client.is_server_live()
    client.close()
