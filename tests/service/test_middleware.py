"""The ASGI layer: body limit while streaming, invalid Content-Length, metrics labels."""

from __future__ import annotations

import logging
from collections.abc import Iterator, MutableMapping
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.metrics import route_label

from .support import test_settings

LIMIT = 4096


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(test_settings(max_body_bytes=LIMIT))) as c:
        yield c


def _chunks(total: int, piece: int = 1000) -> Iterator[bytes]:
    for start in range(0, total, piece):
        yield b"\0" * min(piece, total - start)


@pytest.mark.parametrize("size", [LIMIT + 1, 10 * LIMIT])
def test_content_length_over_limit(client: TestClient, size: int) -> None:
    r = client.post("/pool/avg", content=b"\0" * size, headers={"content-type": "application/x-npy"})
    assert r.status_code == 413
    assert f"{size} bytes is over the limit of {LIMIT}" in r.json()["detail"]


def test_streamed_body_over_limit(client: TestClient) -> None:
    r = client.post("/pool/avg", content=_chunks(3 * LIMIT), headers={"content-type": "application/x-npy"})
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]


def test_streamed_body_at_limit_is_read(client: TestClient) -> None:
    """Exactly the limit is allowed: the request fails later, on its content, not on its size."""
    r = client.post("/pool/avg", content=_chunks(LIMIT), headers={"content-type": "application/x-npy"})
    assert r.status_code == 400 and "malformed .npy" in r.json()["detail"]


def test_invalid_content_length(client: TestClient) -> None:
    r = client.post(
        "/pool/avg", content=b"", headers={"content-type": "application/x-npy", "content-length": "-5"}
    )
    assert r.status_code == 400 and "Content-Length" in r.json()["detail"]


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("/pool/avg", "/pool/{method}"),
        ("/ui/x/y", "/ui"),
        ("/health", "/health"),
        ("/anything/else", "other"),
    ],
)
def test_route_labels_are_bounded(path: str, label: str) -> None:
    assert route_label(path) == label


def test_client_disconnect_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    """A client that goes away mid-body gets no answer and no error log; metrics count it as 499."""
    app = create_app(test_settings())
    sent: list[MutableMapping[str, Any]] = []
    messages: Iterator[dict[str, Any]] = iter(
        [{"type": "http.request", "body": b"\x93NUMPY", "more_body": True}, {"type": "http.disconnect"}]
    )

    async def receive() -> dict:
        return next(messages)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/pool/avg",
        "raw_path": b"/pool/avg",
        "root_path": "",
        "query_string": b"kernel_size=2",
        "headers": [(b"content-type", b"application/x-npy")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
        "state": {},
    }

    async def run() -> None:
        await app(scope, receive, send)

    with caplog.at_level(logging.INFO, "poolserve"):
        anyio.run(run)
    assert sent == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    metrics = app.state.metrics.registry.get_sample_value(
        "poolserve_requests_total", {"route": "/pool/{method}", "method": "avg", "status": "499"}
    )
    assert metrics == 1.0
