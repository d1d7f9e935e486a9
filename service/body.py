"""Reading a request body into one buffer, copied once.

Starlette's ``request.body()`` collects the chunks and joins them into ``bytes``: read-only, so a codec
that wants to use the data in place (.npy) must copy it again. With a Content-Length the body goes
straight into a preallocated ``bytearray`` instead: one copy, and the result is writable.
"""

from __future__ import annotations

from starlette.requests import Request

from .errors import BadRequest

__all__ = ["read_body"]


def _content_length(request: Request) -> int | None:
    header = request.headers.get("content-length")
    if header is None:
        return None
    try:
        length = int(header)
    except ValueError:
        return None
    return length if length >= 0 else None


async def read_body(request: Request) -> bytes | bytearray:
    """The whole body: a ``bytearray`` filled in place when a Content-Length announces its size, else
    (chunked) the chunks joined into ``bytes``.

    The length can be trusted for the allocation: :class:`service.middleware.ServiceMiddleware` answers
    413 to a Content-Length over ``max_body_bytes`` (400 to an invalid one) before any of the body is read,
    and stops a body that streams past the limit. A body that does not match its Content-Length is a 400,
    and never writes past the buffer.
    """
    length = _content_length(request)
    if length is None:
        return b"".join([chunk async for chunk in request.stream()])
    body = bytearray(length)
    filled = 0
    with memoryview(body) as view:
        async for chunk in request.stream():
            end = filled + len(chunk)
            if end > length:
                raise BadRequest(f"the request body is longer than its Content-Length of {length} bytes")
            view[filled:end] = chunk
            filled = end
    if filled != length:
        raise BadRequest(
            f"the request body has {filled} bytes but its Content-Length announces {length} bytes"
        )
    return body
