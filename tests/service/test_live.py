"""Over a real socket: uvicorn in a subprocess on a free loopback port, driven by httpx.

Every registered method × JSON/npy/image request × every Accept, compared with poolcore called
directly; train mode for every random method; and the bad-input table, including the body limit
enforced on a real stream.
"""

from __future__ import annotations

import io
import select
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
import orjson
import pytest
import torch
from PIL import Image

import poolcore

from .bad_inputs import CASES, BadCase, send
from .support import (
    HEADLESS,
    LIMITS,
    default_params,
    live_server,
    npy_bytes,
    png_bytes,
    query_string,
    reference,
)

pytestmark = pytest.mark.slow

METHODS = poolcore.methods()
RANDOM = [m for m in METHODS if poolcore.get_spec(m).random]
RNG = np.random.default_rng(7)
X = RNG.uniform(0.1, 1.0, (1, 3, 8, 8)).astype(np.float32)
PIXELS = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
ACCEPTS = {"json": "application/json", "npy": "application/x-npy", "png": "image/png"}


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with live_server(HEADLESS) as url:  # the page is not under test here
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=60.0, trust_env=False) as c:
        yield c


def _request(kind: str, method: str, params: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor]:
    """The httpx arguments for one input kind, and the tensor the server should see."""
    if kind == "json":
        return {"json": {"data": X.tolist(), "params": params}}, torch.from_numpy(X)
    if kind == "npy":
        return {
            "params": query_string(params),
            "content": npy_bytes(X),
            "headers": {"content-type": "application/x-npy"},
        }, torch.from_numpy(X)
    x = torch.from_numpy(PIXELS.astype(np.float32) / 255.0).permute(2, 0, 1)
    return {
        "params": query_string(params),
        "content": png_bytes(PIXELS),
        "headers": {"content-type": "image/png"},
    }, x


def _read(response: httpx.Response, accept: str) -> np.ndarray:
    assert response.headers["content-type"] == ACCEPTS[accept]
    if accept == "json":
        doc = response.json()
        return np.asarray(doc["data"], dtype=doc["dtype"])
    if accept == "npy":
        return np.load(io.BytesIO(response.content), allow_pickle=False)
    return np.asarray(Image.open(io.BytesIO(response.content)), dtype=np.float32)


def _as_png_pixels(t: torch.Tensor) -> np.ndarray:
    t = t.squeeze(0) if t.dim() == 4 else t
    return (t.clamp(0, 1) * 255).round().permute(1, 2, 0).numpy()


@pytest.mark.parametrize("accept", list(ACCEPTS))
@pytest.mark.parametrize("kind", ["json", "npy", "image"])
@pytest.mark.parametrize("method", METHODS)
def test_matrix(client: httpx.Client, method: str, kind: str, accept: str) -> None:
    params = default_params(method)
    kwargs, x = _request(kind, method, params)
    kwargs.setdefault("headers", {})["accept"] = ACCEPTS[accept]
    r = client.post(f"/pool/{method}", **kwargs)
    assert r.status_code == 200, r.text
    # The server pools an image as (C, H, W), in 2d (the route adds dims=2 to an image's parameters).
    expected = reference(x, method, {**params, "dims": 2} if kind == "image" else params)
    got = _read(r, accept)
    if accept == "png":
        np.testing.assert_allclose(got, _as_png_pixels(expected), atol=1.0)
    else:
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6, atol=1e-7)
    assert r.headers["x-pool-method"] == poolcore.get_spec(method).name
    assert orjson.loads(r.headers["x-pool-params"])["mode"] == "eval"


@pytest.mark.parametrize("kind", ["json", "npy", "image"])
def test_default_response_is_the_request_kind(client: httpx.Client, kind: str) -> None:
    kwargs, _ = _request(kind, "avg", {"kernel_size": 2})
    r = client.post("/pool/avg", **kwargs)
    expected = {"json": "application/json", "npy": "application/x-npy", "image": "image/png"}[kind]
    assert r.status_code == 200 and r.headers["content-type"] == expected


@pytest.mark.parametrize(
    "method", RANDOM or [pytest.param(None, marks=pytest.mark.skip(reason="no random method registered yet"))]
)
@pytest.mark.parametrize("accept", ["json", "npy"])
def test_train_mode_seed(client: httpx.Client, method: str, accept: str) -> None:
    params = default_params(method)
    query = {**query_string(params), "mode": "train"}
    headers = {"content-type": "application/x-npy", "accept": ACCEPTS[accept]}
    first = client.post(f"/pool/{method}", params=query, content=npy_bytes(X), headers=headers)
    assert first.status_code == 200, first.text
    seed = int(first.headers["x-pool-seed"])
    assert orjson.loads(first.headers["x-pool-params"])["seed"] == seed
    expected = reference(torch.from_numpy(X), method, params, seed=seed)
    np.testing.assert_allclose(_read(first, accept), expected.numpy(), rtol=1e-6, atol=1e-7)
    again = client.post(
        f"/pool/{method}", params={**query, "seed": str(seed)}, content=npy_bytes(X), headers=headers
    )
    assert again.content == first.content


@pytest.mark.parametrize("case", CASES, ids=lambda c: getattr(c, "id", "skipped"))
def test_bad_input(client: httpx.Client, case: BadCase) -> None:
    r = send(client, case)
    assert r.status_code == case.status, r.text
    assert case.fragment in r.json()["detail"].lower()


def _read_reply(sock: socket.socket, start: bytes = b"") -> str:
    """One HTTP response (head and Content-Length body) from a raw socket."""
    data = start
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            break
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        more = sock.recv(65536)
        if not more:
            break
        body += more
    return (head + b"\r\n\r\n" + body).decode("latin-1")


def test_content_length_over_limit_refused_before_the_body(base_url: str) -> None:
    """413 comes back although not one body byte is sent."""
    url = urlparse(base_url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        head = (
            "POST /pool/avg?kernel_size=2 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/x-npy\r\n"
            f"Content-Length: {LIMITS['max_body_bytes'] * 1000}\r\n\r\n"
        )
        sock.sendall(head.encode())
        reply = _read_reply(sock)
    assert reply.startswith("HTTP/1.1 413"), reply
    assert "over the limit" in reply


def test_chunked_body_over_limit_is_cut_off(base_url: str) -> None:
    """A chunked upload that never ends: the server answers 413 once the limit passes."""
    url = urlparse(base_url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        head = (
            "POST /pool/avg?kernel_size=2 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/x-npy\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        sock.sendall(head.encode())
        chunk = b"%x\r\n" % 65536 + b"\0" * 65536 + b"\r\n"
        sent = 0
        reply = b""
        while sent <= 4 * LIMITS["max_body_bytes"]:
            if select.select([sock], [], [], 0.01)[0]:  # the server has answered
                reply = sock.recv(65536)
                break
            try:
                sock.sendall(chunk)
            except OSError:  # the server closed the connection after answering
                break
            sent += 65536
        text = _read_reply(sock, reply)
    assert text.startswith("HTTP/1.1 413"), text
    assert "over the limit" in text
    assert sent <= 2 * LIMITS["max_body_bytes"], f"the server read {sent} bytes before refusing"


def test_health_ready_methods_metrics(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready", "device": "cpu"}
    names = [m["name"] for m in client.get("/methods").json()["methods"]]
    assert names == METHODS
    client.post("/pool/no_such_method", json={"data": [1.0]})
    metrics = client.get("/metrics").text
    assert 'poolserve_errors_total{method="unknown",route="/pool/{method}",status="404"}' in metrics
