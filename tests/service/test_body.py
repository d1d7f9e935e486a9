"""read_body: one writable buffer that grows with the bytes received (never sized from the Content-Length
alone), a body that does not match its Content-Length refused, a route's own limit enforced."""

from __future__ import annotations

import tracemalloc
from collections.abc import Sequence

import anyio
import pytest
from starlette.requests import Request
from starlette.types import Message

import service.body as body_module
from service.body import PART_BYTES, read_body
from service.errors import BadRequest, PayloadTooLarge


def _request(chunks: Sequence[bytes], content_length: int | str | None) -> Request:
    """A request whose ASGI ``receive`` hands out ``chunks``, the last with ``more_body`` false."""
    headers = [] if content_length is None else [(b"content-length", str(content_length).encode())]
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}
    messages: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ] or [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> Message:
        return messages.pop(0)

    return Request(scope, receive)


def _read(
    chunks: Sequence[bytes], content_length: int | str | None, limit: int | None = None
) -> bytes | bytearray:
    async def main() -> bytes | bytearray:
        return await read_body(_request(chunks, content_length), limit)

    return anyio.run(main)


CHUNKS = [bytes(range(i, i + 7)) for i in range(0, 70, 7)]  # 70 distinct bytes in 10 chunks
WHOLE = b"".join(CHUNKS)


def test_content_length_fills_one_writable_buffer() -> None:
    body = _read(CHUNKS, len(WHOLE))
    assert isinstance(body, bytearray) and body == WHOLE


def test_content_length_with_one_chunk() -> None:
    body = _read([WHOLE], len(WHOLE))
    assert isinstance(body, bytearray) and body == WHOLE


@pytest.mark.parametrize("content_length", [0, None])
def test_empty_body(content_length: int | None) -> None:
    assert _read([], content_length) == b""


def test_shorter_than_announced() -> None:
    with pytest.raises(BadRequest, match=f"has {len(WHOLE)} bytes but its Content-Length announces 71"):
        _read(CHUNKS, len(WHOLE) + 1)


@pytest.mark.parametrize("announced", [len(WHOLE) - 1, 7, 3, 0])
def test_longer_than_announced(announced: int) -> None:
    """Refused at the chunk that would pass the end of the buffer, whether it ends or crosses it."""
    with pytest.raises(BadRequest, match=f"longer than its Content-Length of {announced} bytes"):
        _read(CHUNKS, announced)


def test_chunked_body_is_joined() -> None:
    body = _read(CHUNKS, None)
    assert isinstance(body, bytearray) and body == WHOLE


def test_nothing_is_sized_from_the_announced_length(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that announces 64 MiB and sends one byte makes no buffer larger than that byte (the
    allocations are recorded, so this is not a timing test)."""
    sizes: list[int] = []

    def recording_bytearray(size: int = 0) -> bytearray:
        sizes.append(size)
        return bytearray(size)

    monkeypatch.setattr(body_module, "bytearray", recording_bytearray, raising=False)
    with pytest.raises(BadRequest, match="has 1 bytes but its Content-Length announces"):
        _read([b"x"], 64 << 20)
    assert sizes and max(sizes) <= 1


def test_large_body_in_many_chunks_is_joined() -> None:
    chunk = bytes(range(256)) * 256  # 64 KiB
    chunks = [chunk] * 40  # 2.5 MiB
    whole = b"".join(chunks)
    for announced in (len(whole), None):
        body = _read(chunks, announced)
        assert isinstance(body, bytearray) and body == whole


def test_a_body_dripped_in_tiny_chunks_costs_about_its_bytes() -> None:
    """200 KB in 1-byte chunks: kept one object per chunk, they would take ~35 bytes each; merged into
    parts of PART_BYTES they take about the body's size (peak: the parts and the joined copy). The chunks
    are made as the body is read, so only what read_body keeps is traced."""
    data = bytes(range(256)) * 800
    position = 0

    async def receive() -> Message:
        nonlocal position
        position += 1
        return {
            "type": "http.request",
            "body": data[position - 1 : position],
            "more_body": position < len(data),
        }

    headers = [(b"content-length", str(len(data)).encode())]
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}

    async def main() -> tuple[bytearray, int]:
        tracemalloc.start()
        try:
            body = await read_body(Request(scope, receive))
            return body, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    body, peak = anyio.run(main)
    assert body == data
    assert len(data) > PART_BYTES  # several parts were made
    assert peak < 4 * len(data), f"peak {peak} bytes for a {len(data)}-byte body"


def test_route_limit_refuses_a_large_announced_length_before_reading() -> None:
    with pytest.raises(PayloadTooLarge, match="body of 71 bytes is over this route's limit of 70 bytes"):
        _read([*CHUNKS, b"!"], len(WHOLE) + 1, limit=len(WHOLE))


def test_route_limit_stops_a_chunked_body_that_grows_past_it() -> None:
    with pytest.raises(PayloadTooLarge, match="over this route's limit of 20 bytes"):
        _read(CHUNKS, None, limit=20)
    assert _read(CHUNKS, None, limit=len(WHOLE)) == WHOLE


def test_invalid_content_length_reads_like_chunked() -> None:
    """The middleware answers 400 to these before any read; read_body itself does not trust them."""
    assert _read(CHUNKS, "-1") == WHOLE
    assert _read(CHUNKS, "12x") == WHOLE
