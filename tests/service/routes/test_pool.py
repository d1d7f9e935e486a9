"""POST /pool/{method} in process (TestClient, lifespan running): every method, every content type,
every Accept, the bad-input table, train-mode seeds, and the error boundary."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

import numpy as np
import orjson
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import poolcore
import poolcore.registry
import service.pooling as pooling_module
from poolcore.basic import MaxParams, max_pool
from service.app import create_app
from service.codecs import npy as npy_codec

from ..bad_inputs import CASES, BadCase, send
from ..support import (
    default_params,
    headless_settings,
    npy_bytes,
    png_bytes,
    query_string,
    reference,
    test_settings,
)

METHODS = poolcore.methods()
RNG = np.random.default_rng(1234)
X = RNG.uniform(0.1, 1.0, (1, 3, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(headless_settings())) as c:
        yield c


def _decode(response: Any) -> np.ndarray:
    kind = response.headers["content-type"]
    if kind.startswith("application/json"):
        doc = response.json()
        return np.asarray(doc["data"], dtype=doc["dtype"])
    if kind == "application/x-npy":
        return np.load(io.BytesIO(response.content), allow_pickle=False)
    return np.asarray(Image.open(io.BytesIO(response.content)))


@pytest.mark.parametrize("method", ["max", "avg", "mixed", "stochastic", "lp", "gem"])
def test_dilation_is_a_window_parameter(client: TestClient, method: str) -> None:
    """POST /pool/{method}?kernel_size=3&dilation=2: max is torch's dilated max_pool2d, every method gives its
    output shape; a dilation with output_size, or one whose window outgrows the input, is a 422 naming it."""
    x = RNG.uniform(0.1, 1.0, (1, 2, 9, 10)).astype(np.float32)
    r = client.post(f"/pool/{method}?kernel_size=3&dilation=2&stride=2&padding=1", json={"data": x.tolist()})
    assert r.status_code == 200, r.text
    want = torch.nn.functional.max_pool2d(torch.from_numpy(x), 3, 2, 1, 2)
    assert r.json()["shape"] == list(want.shape) and r.json()["params"]["dilation"] == 2
    if method == "max":
        np.testing.assert_array_equal(_decode(r), want.numpy())
    r = client.post(
        f"/pool/{method}", json={"data": x.tolist(), "params": {"kernel_size": 3, "dilation": [5, 1]}}
    )
    assert r.status_code == 422 and "dilation (5, 1)" in r.json()["detail"], r.text
    r = client.post(f"/pool/{method}?output_size=2&dilation=2", json={"data": x.tolist()})
    assert r.status_code == 422 and "dilation" in r.json()["detail"], r.text
    r = client.post(f"/pool/{method}?kernel_size=3&dilation=0", json={"data": x.tolist()})
    assert r.status_code == 422 and "dilation" in r.json()["detail"], r.text


class TestEveryMethod:
    @pytest.mark.parametrize("method", METHODS)
    def test_json_matches_poolcore(self, client: TestClient, method: str) -> None:
        params = default_params(method)
        r = client.post(f"/pool/{method}", json={"data": X.tolist(), "params": params})
        assert r.status_code == 200, r.text
        doc = r.json()
        expected = reference(torch.from_numpy(X), method, params)
        assert doc["method"] == poolcore.get_spec(method).name
        assert doc["shape"] == list(expected.shape) and doc["dtype"] == "float32"
        np.testing.assert_allclose(
            np.asarray(doc["data"], np.float32), expected.numpy(), rtol=1e-6, atol=1e-7
        )
        resolved = poolcore.get_spec(method).resolve(params)
        assert {k: doc["params"][k] for k in resolved} == orjson.loads(orjson.dumps(resolved))
        assert doc["params"]["mode"] == "eval" and doc["params"]["seed"] is None

    @pytest.mark.parametrize("method", METHODS)
    def test_npy_matches_poolcore(self, client: TestClient, method: str) -> None:
        params = default_params(method)
        r = client.post(
            f"/pool/{method}",
            params=query_string(params),
            content=npy_bytes(X),
            headers={"content-type": "application/x-npy"},
        )
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/x-npy"
        out = np.load(io.BytesIO(r.content), allow_pickle=False)
        np.testing.assert_array_equal(out, reference(torch.from_numpy(X), method, params).numpy())
        assert orjson.loads(r.headers["x-pool-params"])["mode"] == "eval"
        timing = r.headers["server-timing"]
        assert timing.startswith("read;dur=") and ", run;dur=" in timing

    @pytest.mark.parametrize("method", METHODS)
    def test_image_roundtrip(self, client: TestClient, method: str) -> None:
        pixels = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        params = default_params(method)
        r = client.post(
            f"/pool/{method}",
            params=query_string(params),
            content=png_bytes(pixels),
            headers={"content-type": "image/png"},
        )
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png"
        x = torch.from_numpy(pixels.astype(np.float32) / 255.0).permute(2, 0, 1)
        expected = (
            (reference(x, method, {**params, "dims": 2}).clamp(0, 1) * 255).round().permute(1, 2, 0).numpy()
        )
        got = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), dtype=np.float32)
        np.testing.assert_allclose(got, expected, atol=1.0)


class TestContentTypes:
    def test_accept_each_kind(self, client: TestClient) -> None:
        params = {"kernel_size": 2}
        expected = reference(torch.from_numpy(X), "avg", params).numpy()
        for accept in (
            "application/json",
            "application/x-npy",
            "application/octet-stream",
            "image/png",
            "*/*",
        ):
            r = client.post(
                "/pool/avg",
                params=query_string(params),
                content=npy_bytes(X),
                headers={"content-type": "application/x-npy", "accept": accept},
            )
            assert r.status_code == 200, (accept, r.text)
            got = _decode(r)
            if accept == "image/png":
                np.testing.assert_allclose(got, (expected[0].transpose(1, 2, 0) * 255).round(), atol=1.0)
            else:
                np.testing.assert_allclose(got, expected, rtol=1e-6)

    def test_accept_quality_and_wildcards(self, client: TestClient) -> None:
        body = {"data": X.tolist(), "params": {"kernel_size": 2}}
        cases = {
            "application/json;q=0.2, application/x-npy;q=0.9": "application/x-npy",
            "image/*": "image/png",
            "application/*": "application/json",  # the request's own kind wins a tie
            "text/html, */*;q=0.1": "application/json",
        }
        for accept, expected in cases.items():
            r = client.post("/pool/max", json=body, headers={"accept": accept})
            assert r.status_code == 200 and r.headers["content-type"] == expected, (accept, r.headers)

    def test_grayscale_and_rgba_keep_channels(self, client: TestClient) -> None:
        for mode, shape in (("L", (8, 8)), ("RGBA", (8, 8, 4))):
            pixels = RNG.integers(0, 256, shape, dtype=np.uint8)
            r = client.post(
                "/pool/max",
                params={"kernel_size": "2"},
                content=png_bytes(pixels, mode),
                headers={"content-type": "image/png", "accept": "application/json"},
            )
            assert r.status_code == 200, r.text
            x = torch.from_numpy(pixels.astype(np.float32) / 255.0)
            x = x[None] if mode == "L" else x.permute(2, 0, 1)
            np.testing.assert_allclose(
                np.asarray(r.json()["data"]), torch.nn.functional.max_pool2d(x, 2).numpy(), rtol=1e-6
            )

    def test_jpeg_input(self, client: TestClient) -> None:
        pixels = RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
        r = client.post(
            "/pool/avg",
            params={"kernel_size": "4"},
            content=buf.getvalue(),
            headers={"content-type": "image/jpeg", "accept": "application/json"},
        )
        assert r.status_code == 200, r.text
        decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), np.float32) / 255.0
        expected = torch.nn.functional.avg_pool2d(torch.from_numpy(decoded).permute(2, 0, 1), 4)
        np.testing.assert_allclose(np.asarray(r.json()["data"]), expected.numpy(), rtol=1e-5, atol=1e-6)

    def test_multipart_file_and_form_fields(self, client: TestClient) -> None:
        r = client.post(
            "/pool/adaptive_avg",
            files={"file": ("x.npy", npy_bytes(X), "application/octet-stream")},
            data={"output_size": "null,3"},
        )
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/x-npy"
        expected = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(X), (None, 3))
        np.testing.assert_allclose(np.load(io.BytesIO(r.content)), expected.numpy(), rtol=1e-6)

    def test_multipart_image_with_query_params(self, client: TestClient) -> None:
        pixels = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        r = client.post(
            "/pool/max?kernel_size=2,4", files={"file": ("x.png", png_bytes(pixels), "image/png")}
        )
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(r.content)).size == (2, 4)  # width 8/4, height 8/2

    def test_query_tuples_and_null(self, client: TestClient) -> None:
        x = RNG.uniform(0.1, 1.0, (1, 2, 10, 9)).astype(np.float32)
        cases = {
            "kernel_size=2,3&stride=1,2&padding=1&ceil_mode=true": lambda t: torch.nn.functional.avg_pool2d(
                t, (2, 3), (1, 2), 1, ceil_mode=True
            ),
            "output_size=null,7": lambda t: torch.nn.functional.adaptive_avg_pool2d(t, (None, 7)),
            "output_size=5,7": lambda t: torch.nn.functional.adaptive_avg_pool2d(t, (5, 7)),
        }
        for query, ref in cases.items():
            r = client.post(
                f"/pool/avg?{query}", content=npy_bytes(x), headers={"content-type": "application/x-npy"}
            )
            assert r.status_code == 200, (query, r.text)
            np.testing.assert_allclose(
                np.load(io.BytesIO(r.content)), ref(torch.from_numpy(x)).numpy(), rtol=1e-6
            )

    def test_dtypes_kept(self, client: TestClient) -> None:
        for dtype in (np.float16, np.float64):
            x = X.astype(dtype)
            r = client.post(
                "/pool/max?kernel_size=2", content=npy_bytes(x), headers={"content-type": "application/x-npy"}
            )
            out = np.load(io.BytesIO(r.content))
            assert out.dtype == dtype
            np.testing.assert_array_equal(out, torch.nn.functional.max_pool2d(torch.from_numpy(x), 2).numpy())
        r = client.post(
            "/pool/max", json={"data": X.tolist(), "params": {"kernel_size": 2}, "dtype": "float64"}
        )
        assert r.json()["dtype"] == "float64"

    def test_integer_npy_becomes_float32(self, client: TestClient) -> None:
        x = np.arange(16, dtype=np.int16).reshape(1, 4, 4)
        r = client.post(
            "/pool/avg?kernel_size=2&dims=2",
            content=npy_bytes(x),
            headers={"content-type": "application/x-npy"},
        )
        out = np.load(io.BytesIO(r.content))
        assert out.dtype == np.float32
        np.testing.assert_allclose(
            out, torch.nn.functional.avg_pool2d(torch.from_numpy(x).float(), 2).numpy()
        )


@pytest.mark.parametrize("case", CASES, ids=lambda c: getattr(c, "id", "skipped"))
def test_bad_input(client: TestClient, case: BadCase) -> None:
    r = send(client, case)
    assert r.status_code == case.status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and case.fragment in detail.lower(), detail


# ---- a random method, registered only for these tests, to exercise train mode and seeds ---------------


def _noisy_max(
    x: torch.Tensor,
    *args: Any,
    training: bool = False,
    generator: torch.Generator | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    out = max_pool(x, *args, **kwargs)
    if training:
        out = out + torch.rand(out.shape, generator=generator, dtype=out.dtype, device=out.device)
    return out


def _raises_type_error(x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    raise TypeError(f"kernel_size entries must be integers (got {kwargs.get('kernel_size')!r})")


@pytest.fixture
def extra_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register two methods the way poolcore would, without touching service code."""
    noisy = poolcore.MethodSpec(
        "noisy_max",
        "max plus seeded noise in train mode",
        _noisy_max,
        MaxParams,
        random=True,
        takes_training=True,
    )
    typed = poolcore.MethodSpec("type_error", "always raises TypeError", _raises_type_error, MaxParams)
    monkeypatch.setattr(
        poolcore.registry,
        "REGISTRY",
        MappingProxyType({**poolcore.registry.REGISTRY, "noisy_max": noisy, "type_error": typed}),
    )
    monkeypatch.setattr(
        poolcore.registry, "ALIASES", MappingProxyType({**poolcore.registry.ALIASES, "noisy": "noisy_max"})
    )


@pytest.mark.usefixtures("extra_methods")
class TestTrainMode:
    def test_seed_drawn_returned_and_reproducible(self) -> None:
        with TestClient(create_app(headless_settings())) as client:
            body = {"data": X.tolist(), "params": {"kernel_size": 2, "mode": "train"}}
            first = client.post("/pool/noisy_max", json=body)
            assert first.status_code == 200, first.text
            seed = first.json()["params"]["seed"]
            assert isinstance(seed, int) and 0 <= seed < 2**63
            assert first.headers["x-pool-seed"] == str(seed)
            expected = reference(torch.from_numpy(X), "noisy_max", {"kernel_size": 2}, seed=seed)
            np.testing.assert_allclose(
                np.asarray(first.json()["data"], np.float32), expected.numpy(), rtol=1e-6
            )
            body["params"]["seed"] = seed
            again = client.post("/pool/noisy_max", json=body)
            assert again.content == first.content
            other = client.post("/pool/noisy", json={**body, "params": {**body["params"], "seed": seed + 1}})
            assert other.json()["method"] == "noisy_max"  # the alias resolves
            assert other.json()["data"] != first.json()["data"]

    def test_npy_same_seed_same_bytes(self) -> None:
        with TestClient(create_app(headless_settings())) as client:
            query = {"kernel_size": "2", "mode": "train", "seed": "42"}
            headers = {"content-type": "application/x-npy"}
            a = client.post("/pool/noisy_max", params=query, content=npy_bytes(X), headers=headers)
            b = client.post("/pool/noisy_max", params=query, content=npy_bytes(X), headers=headers)
            assert a.status_code == 200 and a.content == b.content
            expected = reference(torch.from_numpy(X), "noisy_max", {"kernel_size": 2}, seed=42)
            np.testing.assert_array_equal(np.load(io.BytesIO(a.content)), expected.numpy())

    def test_eval_mode_reports_no_seed(self) -> None:
        with TestClient(create_app(headless_settings())) as client:
            r = client.post(
                "/pool/noisy_max", json={"data": X.tolist(), "params": {"kernel_size": 2, "seed": 5}}
            )
            assert r.json()["params"]["seed"] is None
            np.testing.assert_allclose(
                np.asarray(r.json()["data"], np.float32),
                torch.nn.functional.max_pool2d(torch.from_numpy(X), 2).numpy(),
            )

    def test_new_method_in_routes_docs_and_methods(self) -> None:
        with TestClient(create_app(headless_settings())) as client:
            schema = client.get("/openapi.json").json()
            path = schema["paths"]["/pool/{method}"]["post"]
            enum = next(p for p in path["parameters"] if p["name"] == "method")["schema"]["enum"]
            assert "noisy_max" in enum
            names = [m["name"] for m in client.get("/methods").json()["methods"]]
            assert "noisy_max" in names

    def test_operator_type_error_is_422(self) -> None:
        with TestClient(create_app(headless_settings())) as client:
            r = client.post("/pool/type_error", json={"data": X.tolist(), "params": {"kernel_size": 2}})
            assert r.status_code == 422 and "must be integers" in r.json()["detail"]


class TestErrorBoundary:
    def test_unexpected_error_is_logged_generic_500(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        def boom(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("secret internals")

        monkeypatch.setattr(pooling_module, "pool_many", boom)
        with (
            TestClient(create_app(headless_settings())) as client,
            caplog.at_level(logging.ERROR, "poolserve"),
        ):
            r = client.post(
                "/pool/avg",
                json={"data": X.tolist(), "params": {"kernel_size": 2}},
                headers={"x-request-id": "req-123"},
            )
        assert r.status_code == 500
        assert r.json() == {"detail": "internal server error (request id req-123)"}
        assert r.headers["x-request-id"] == "req-123"
        assert any("req-123" in rec.getMessage() and rec.exc_info for rec in caplog.records)

    def test_health_answers_while_pool_work_is_blocked(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Fill every worker thread with a blocked request; /health must still answer, and no more than
        max_concurrency threads may be pooling at once (each may hold a batch of requests)."""
        release = threading.Event()
        inside: list[int] = []  # requests inside pool_many, one entry per call
        threads: set[str] = set()
        lock = threading.Lock()
        real = pooling_module.pool_many

        def blocking(requests: Any, *args: Any) -> Any:
            with lock:
                inside.append(len(requests))
                threads.add(threading.current_thread().name)
            release.wait(30)
            return real(requests, *args)

        monkeypatch.setattr(pooling_module, "pool_many", blocking)  # the batch path of every route
        with TestClient(create_app(headless_settings(max_concurrency=2))) as client:
            body = {"data": X.tolist(), "params": {"kernel_size": 2}}
            results: list[int] = []
            workers = [
                threading.Thread(
                    target=lambda: results.append(client.post("/pool/avg", json=body).status_code)
                )
                for _ in range(3)
            ]
            for w in workers:
                w.start()
            for _ in range(200):
                if len(inside) >= 2 or sum(inside) >= 3:
                    break
                threading.Event().wait(0.05)
            health: list[int] = []
            probe = threading.Thread(target=lambda: health.append(client.get("/health").status_code))
            probe.start()
            probe.join(20)
            assert health == [200], "/health did not answer while pool requests were running"
            assert len(inside) <= 2 and len(threads) <= 2, "more than max_concurrency threads pooled at once"
            assert not results
            release.set()
            for w in workers:
                w.join(30)
        assert results == [200, 200, 200]


def test_npy_body_reaches_the_codec_writable(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """The route hands the codec a bytearray, with a Content-Length or chunked, so the .npy data is used in
    place. Both give the reference output."""
    seen: list[type] = []
    real = npy_codec.decode

    def spy(body: bytes | bytearray | memoryview, limits: Any) -> torch.Tensor:
        seen.append(type(body))
        return real(body, limits)

    monkeypatch.setattr(npy_codec, "decode", spy)
    data = npy_bytes(X)
    headers = {"content-type": "application/x-npy"}
    expected = reference(torch.from_numpy(X), "avg", {"kernel_size": 2}).numpy()
    for content in (data, iter([data[:100], data[100:]])):
        r = client.post("/pool/avg?kernel_size=2", content=content, headers=headers)
        assert r.status_code == 200
        np.testing.assert_allclose(_decode(r), expected, rtol=1e-6)
    assert seen == [bytearray, bytearray]


@pytest.mark.parametrize("method", ["avg", "stochastic", "lp"])
def test_queued_requests_are_answered_together_each_with_its_own_result(method: str) -> None:
    """With the one worker thread held, requests queue up; released, they are answered in one batch.
    Same-shape inputs of a stackable method share one operator call (X-Pool-Batch), a different shape
    runs on its own, lp (not stackable) runs one by one; every answer equals poolcore on its own input."""
    generator = torch.Generator().manual_seed(7)
    inputs = [torch.rand(1, 2, 6, 6, generator=generator) + 0.1 for _ in range(4)]
    inputs.append(torch.rand(1, 2, 8, 8, generator=generator) + 0.1)  # another shape
    gate, started = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        gate.wait(30)

    answers: dict[int, Any] = {}
    with TestClient(create_app(headless_settings(max_concurrency=1))) as client:
        workers = client.app.state.workers  # type: ignore[attr-defined]
        holder = threading.Thread(target=workers.call, args=(hold,))
        holder.start()
        assert started.wait(30)

        def post(i: int) -> None:
            body = {"data": inputs[i].tolist(), "params": {"kernel_size": 2}}
            answers[i] = client.post(f"/pool/{method}", json=body)

        senders = [threading.Thread(target=post, args=(i,)) for i in range(len(inputs))]
        for sender in senders:
            sender.start()
        for _ in range(600):
            if workers.pending() == len(inputs):
                break
            threading.Event().wait(0.05)
        assert workers.pending() == len(inputs), "the requests did not all queue behind the held worker"
        gate.set()
        for thread in (holder, *senders):
            thread.join(30)
        registry = client.app.state.metrics.registry  # type: ignore[attr-defined]
        observed = registry.get_sample_value("poolserve_pool_seconds_sum", {"method": method})
    stackable = poolcore.get_spec(method).stackable
    # The operator-time metric counts a shared call once: each request observes its share of it.
    shares = [
        float(r.headers["x-pool-elapsed-ms"]) / 1e3 / int(r.headers["x-pool-batch"]) for r in answers.values()
    ]
    assert observed == pytest.approx(sum(shares), abs=1e-6 * len(shares))
    for i, x in enumerate(inputs):
        r = answers[i]
        assert r.status_code == 200, r.text
        expected = poolcore.pool(x, method, kernel_size=2)  # eval: deterministic for every method
        assert torch.equal(torch.tensor(r.json()["data"]), expected)
        same_shape = sum(1 for y in inputs if y.shape == x.shape)
        assert r.headers["x-pool-batch"] == str(same_shape if stackable else 1)


class TestJsonBodyLimit:
    """JSON has its own body limit (POOLSERVE_MAX_JSON_BYTES), below the binary one: orjson expands a
    body several times over while parsing it. Checked at ±1 byte, announced and streamed."""

    LIMIT = 4096

    @pytest.fixture(scope="class")
    def small_json(self) -> Iterator[TestClient]:
        with TestClient(create_app(headless_settings(max_json_bytes=self.LIMIT))) as c:
            yield c

    @staticmethod
    def _body(size: int) -> bytes:
        """A valid JSON request of exactly ``size`` bytes (padded with spaces, which JSON ignores)."""
        core = orjson.dumps({"data": [[1.0, 2.0], [3.0, 4.0]], "params": {"kernel_size": 2, "dims": 2}})
        return core + b" " * (size - len(core))

    def test_at_the_limit_is_served(self, small_json: TestClient) -> None:
        r = small_json.post(
            "/pool/avg", content=self._body(self.LIMIT), headers={"content-type": "application/json"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["data"] == [[2.5]]

    def test_one_byte_over_is_413(self, small_json: TestClient) -> None:
        r = small_json.post(
            "/pool/avg", content=self._body(self.LIMIT + 1), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413
        assert (
            r.json()["detail"]
            == f"request body of {self.LIMIT + 1} bytes is over this route's limit of {self.LIMIT} bytes"
        )

    def test_chunked_body_past_the_limit_is_413(self, small_json: TestClient) -> None:
        body = self._body(self.LIMIT + 1)
        chunks = iter([body[:1000], body[1000:]])  # no Content-Length: sent chunked
        r = small_json.post("/pool/avg", content=chunks, headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert "over this route's limit of 4096 bytes" in r.json()["detail"]

    def test_npy_is_not_held_to_the_json_limit(self, small_json: TestClient) -> None:
        x = np.ones((1, 1, 32, 32), dtype=np.float32)  # 4 KiB of data plus the header
        r = small_json.post(
            "/pool/avg?kernel_size=2&dims=2",
            content=npy_bytes(x),
            headers={"content-type": "application/x-npy"},
        )
        assert r.status_code == 200, r.text

    def test_methods_states_the_limits(self, small_json: TestClient) -> None:
        limits = small_json.get("/methods").json()["limits"]
        settings = test_settings(max_json_bytes=self.LIMIT)
        assert limits["max_json_bytes"] == self.LIMIT
        assert limits["max_body_bytes"] == settings.max_body_bytes
        assert limits["max_elements"] == settings.max_elements


def test_a_rank_3_input_with_a_scalar_window_is_a_422_naming_both_readings(client: TestClient) -> None:
    """(2, 3, 17) was read as an unbatched image, giving (2, 1, 8) where F.avg_pool1d gives (2, 3, 8)."""
    data = np.arange(2 * 3 * 17, dtype=np.float32).reshape(2, 3, 17)
    r = client.post("/pool/avg", json={"data": data.tolist(), "params": {"kernel_size": 2}})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "(N, C, L)" in detail and "(C, H, W)" in detail and "dims=" in detail
    r = client.post("/pool/avg", json={"data": data.tolist(), "params": {"kernel_size": 2, "dims": 1}})
    assert r.status_code == 200, r.text
    expected = torch.nn.functional.avg_pool1d(torch.from_numpy(data), 2)
    np.testing.assert_allclose(np.asarray(r.json()["data"]), expected.numpy())


@pytest.mark.parametrize("rule, p_max, weight", [("expectation", 0.75, 0.75), ("frequent", 0.75, 1.0)])
def test_mixed_eval_rule_is_a_parameter(client: TestClient, rule: str, p_max: float, weight: float) -> None:
    """The library's eval_rule reaches /pool as a parameter; the expectation is the default."""
    x = torch.from_numpy(X)
    mx, av = torch.nn.functional.max_pool2d(x, 2), torch.nn.functional.avg_pool2d(x, 2)
    expected = (weight * mx + (1 - weight) * av).numpy()
    given = [{"kernel_size": 2, "p_max": p_max, "eval_rule": rule}]
    if rule == "expectation":
        given.append({"kernel_size": 2, "p_max": p_max})  # the default
    for params in given:
        r = client.post("/pool/mixed", json={"data": X.tolist(), "params": params})
        assert r.status_code == 200, r.text
        assert r.json()["params"]["eval_rule"] == rule
        np.testing.assert_allclose(np.asarray(r.json()["data"], np.float32), expected, rtol=1e-6, atol=1e-7)
    bad = {"kernel_size": 2, "eval_rule": "vote"}
    r = client.post("/pool/mixed", json={"data": X.tolist(), "params": bad})
    assert r.status_code == 422 and "eval_rule" in r.text


NPY_TYPE = {"content-type": "application/x-npy"}


class TestMessagesThatSayMore:
    """Messages that name the likely fix, not just the fault (each checked against the real route)."""

    @pytest.fixture(scope="class")
    def client(self) -> Iterator[TestClient]:
        with TestClient(create_app(headless_settings())) as client:
            yield client

    def test_a_misspelt_parameter_suggests_the_name(self, client: TestClient) -> None:
        r = client.post("/pool/avg?kernel=2", content=npy_bytes(X), headers=NPY_TYPE)
        assert r.status_code == 422 and "did you mean kernel_size?" in r.json()["detail"]

    def test_get_says_to_post(self, client: TestClient) -> None:
        r = client.get("/pool/avg")
        assert r.status_code == 405 and "POST a tensor" in r.json()["detail"]

    def test_npy_sent_as_json_is_named(self, client: TestClient) -> None:
        r = client.post(
            "/pool/avg?kernel_size=2", content=npy_bytes(X), headers={"content-type": "application/json"}
        )
        assert r.status_code == 400 and "looks like .npy" in r.json()["detail"]
        assert "application/x-npy" in r.json()["detail"]

    def test_a_global_method_says_it_takes_no_window(self, client: TestClient) -> None:
        r = client.post("/pool/global_avg?kernel_size=2", content=npy_bytes(X), headers=NPY_TYPE)
        assert r.status_code == 422 and "takes no window" in r.json()["detail"]

    def test_too_many_window_values_in_plain_words(self, client: TestClient) -> None:
        r = client.post("/pool/avg?kernel_size=2,2,2,2", content=npy_bytes(X), headers=NPY_TYPE)
        detail = r.json()["detail"]
        assert r.status_code == 422 and "at most 3 values, one per spatial dim" in detail
        assert "after validation" not in detail
