"""Reading a request body into one writable buffer that grows with the bytes that actually arrive.

Starlette's ``request.body()`` collects the chunks and joins them into ``bytes``: read-only, so a codec
that wants to use the data in place (.npy) must copy it again. Here the body goes into a ``bytearray``
instead, writable, so the .npy codec can use it in place.

The buffer is never sized from the Content-Length alone: a client may announce 64 MiB and send one byte,
and forty such connections would otherwise hold gigabytes that never arrive. It starts small and doubles,
up to the announced length, as data comes in, so it holds at most twice the bytes received (or
:data:`FIRST_BYTES`), and each byte is copied at most once more on the way (the doublings add up to less
than the final size).
"""

from __future__ import annotations

from starlette.requests import Request

from .errors import BadRequest, PayloadTooLarge

__all__ = ["FIRST_BYTES", "read_body"]

FIRST_BYTES = 256 * 1024  # the first buffer, before any doubling


def _content_length(request: Request) -> int | None:
    header = request.headers.get("content-length")
    if header is None:
        return None
    try:
        length = int(header)
    except ValueError:
        return None
    return length if length >= 0 else None


async def read_body(request: Request, limit: int | None = None) -> bytearray:
    """The whole body as a ``bytearray``, checked against its Content-Length and against ``limit``.

    ``limit`` is a route's own cap below the service-wide one (the JSON body limit): a Content-Length over
    it is a 413 before anything is read, and so is a body that streams past it.
    :class:`service.middleware.ServiceMiddleware` enforces the service-wide limit the same way, and the
    HTTP protocol (:mod:`service.server`) the time a body may take. A body that does not match its
    Content-Length is a 400.
    """
    length = _content_length(request)
    if limit is not None and length is not None and length > limit:
        raise PayloadTooLarge(f"request body of {length} bytes is over this route's limit of {limit} bytes")
    cap = length if length is not None else limit  # the most bytes this body may have, if known
    body = bytearray(FIRST_BYTES if cap is None else min(cap, FIRST_BYTES))
    filled = 0
    async for chunk in request.stream():
        end = filled + len(chunk)
        if length is not None and end > length:
            raise BadRequest(f"the request body is longer than its Content-Length of {length} bytes")
        if limit is not None and end > limit:
            raise PayloadTooLarge(f"request body is over this route's limit of {limit} bytes")
        if end > len(body):
            size = max(end, 2 * len(body))
            grown = bytearray(size if cap is None else min(size, cap))
            grown[:filled] = memoryview(body)[:filled]
            body = grown
        body[filled:end] = chunk
        filled = end
    if length is not None and filled != length:
        raise BadRequest(
            f"the request body has {filled} bytes but its Content-Length announces {length} bytes"
        )
    if filled != len(body):
        del body[filled:]  # shrinks in place (realloc): no copy of the data
    return body
