"""read_body: one preallocated buffer under a Content-Length, chunks joined without one, a body that
does not match its Content-Length refused."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest
from starlette.requests import Request
from starlette.types import Message

from service.body import read_body
from service.errors import BadRequest


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


def _read(chunks: Sequence[bytes], content_length: int | str | None) -> bytes | bytearray:
    async def main() -> bytes | bytearray:
        return await read_body(_request(chunks, content_length))

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
    assert isinstance(body, bytes) and body == WHOLE


def test_invalid_content_length_reads_like_chunked() -> None:
    """The middleware answers 400 to these before any read; read_body itself does not trust them."""
    assert _read(CHUNKS, "-1") == WHOLE
    assert _read(CHUNKS, "12x") == WHOLE
