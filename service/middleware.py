"""Pure-ASGI request handling around every route: request id, streaming body limit, metrics, and the
last line of the error boundary (a logged, generic 500 for anything unexpected).

uvicorn has no body limit of its own, so bytes are counted as they arrive: a Content-Length over the
limit is answered 413 before any body is read, and a body that grows past it (chunked, or lying about
its length) is cut off with a 413 as soon as it does.
"""

from __future__ import annotations

import logging
import random
import re
import time
from typing import Any

import orjson
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import PayloadTooLarge
from .metrics import Metrics, route_label

__all__ = ["BodyTooLarge", "ServiceMiddleware"]

log = logging.getLogger("poolserve")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class BodyTooLarge(PayloadTooLarge):
    """Raised from ``receive`` when the body passes the limit mid-stream."""


class ServiceMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id, content_length = None, None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                text = value.decode("latin-1")
                request_id = text if _REQUEST_ID.match(text) else None
            elif name == b"content-length":
                content_length = value
        # 128 random bits as 32 hex digits, like uuid4().hex, but from the module PRNG (reseeded after
        # fork): an id needs to be unique, not secret, and os.urandom is a syscall on the event loop.
        request_id = request_id or f"{random.getrandbits(128):032x}"
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        limit = self.max_body_bytes
        received = sent = 0
        status = 500
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(f"request body is over the limit of {limit} bytes")
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal status, started, sent
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        async def reply(code: int, detail: str) -> None:
            body = orjson.dumps({"detail": detail})
            await tracked_send(
                {
                    "type": "http.response.start",
                    "status": code,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", b"%d" % len(body)),
                    ],
                }
            )
            await tracked_send({"type": "http.response.body", "body": body})

        try:
            if content_length is not None:
                try:
                    length = int(content_length)
                except ValueError:
                    length = -1
                if length < 0:
                    await reply(400, f"invalid Content-Length {content_length.decode('latin-1')!r}")
                    return
                if length > limit:
                    await reply(413, f"request body of {length} bytes is over the limit of {limit} bytes")
                    return
            await self.app(scope, limited_receive, tracked_send)
        except ClientDisconnect:
            status = 499  # the client went away mid-request: nothing to answer, nothing to alarm about
            log.info(
                "request %s: client disconnected during %s %s", request_id, scope["method"], scope["path"]
            )
        except PayloadTooLarge as error:
            if started:
                raise
            await reply(413, error.detail)
        except Exception:
            log.exception("request %s: unhandled error in %s %s", request_id, scope["method"], scope["path"])
            if started:
                raise
            await reply(500, f"internal server error (request id {request_id})")
        finally:
            path = scope["path"]
            method = state.get("pool_method") or ("unknown" if path.startswith("/pool/") else "")
            elapsed = time.perf_counter() - start
            self.metrics.observe(route_label(path), method, status, elapsed, received, sent)
