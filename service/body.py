"""Reading a request body into one writable buffer, from the bytes that actually arrive.

Starlette's ``request.body()`` collects the chunks and joins them into ``bytes``: read-only, so a codec
that wants to use the data in place (.npy) must copy it again. Here the body is joined into a
``bytearray`` instead, writable, so the .npy codec can use it in place.

Nothing is ever sized from the Content-Length alone: a client may announce 64 MiB and send one byte, and
forty such connections would otherwise hold gigabytes that never arrive. The chunks are kept as they come
(small ones merged into parts of at least :data:`PART_BYTES`, so a body dripped in tiny chunks costs no
more than its bytes) and joined once at the end: each byte is copied once, and nothing is zero-filled.
That replaced a buffer that doubled as data came in, which cost 0.42 ms against 0.06 ms for a 3 MiB body
(each doubling zero-filled its new buffer and copied the old).
"""

from __future__ import annotations

from starlette.requests import Request

from .errors import BadRequest, PayloadTooLarge

__all__ = ["PART_BYTES", "client_gone", "read_body"]

PART_BYTES = 64 * 1024  # chunks smaller than this are merged into parts at least this large


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
    parts: list[bytes | bytearray] = []
    small = bytearray()  # small chunks, merged until they make a part
    filled = 0
    async for chunk in request.stream():
        end = filled + len(chunk)
        if length is not None and end > length:
            raise BadRequest(f"the request body is longer than its Content-Length of {length} bytes")
        if limit is not None and end > limit:
            raise PayloadTooLarge(f"request body is over this route's limit of {limit} bytes")
        if small or len(chunk) < PART_BYTES:
            small += chunk
            if len(small) >= PART_BYTES:
                parts.append(small)
                small = bytearray()
        else:
            parts.append(chunk)
        filled = end
    if length is not None and filled != length:
        raise BadRequest(
            f"the request body has {filled} bytes but its Content-Length announces {length} bytes"
        )
    if not parts:
        return small
    if small:
        parts.append(small)
    return bytearray().join(parts)


async def client_gone(request: Request) -> None:
    """Returns once the client has disconnected. The body has been read, so the server's next message for
    this request is ``http.disconnect`` (uvicorn sends it when the connection drops); Starlette would not
    cancel the handler, and without this a request whose client gave up would still be run. Every HTTP
    route that queues work passes it to the workers as ``gone``."""
    message = await request.receive()
    if message["type"] != "http.disconnect":  # not a server we know: can't watch (the wait goes on)
        raise RuntimeError(f"unexpected {message['type']!r} after the request body")
