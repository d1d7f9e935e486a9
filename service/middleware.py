"""Pure-ASGI request handling around every route: request id, API keys, streaming body limit, security
headers, metrics, and the last line of the error boundary (a logged, generic 500 for anything unexpected).

API keys (``POOLSERVE_API_KEYS``): when set, every request but the health probes needs
``Authorization: Bearer <key>``, checked by :func:`service.keys.key_problem`. ``/ui`` is left to the
Gradio page's own login (the key is the password), which guards the page and all of its API routes.
Wrong keys are counted per client address (:class:`service.keys.AuthThrottle`); an address locked out
gets 429 with ``Retry-After``, even with a right key. The probes are never throttled.

uvicorn has no body limit of its own, so bytes are counted as they arrive: a Content-Length over the
limit is answered 413 before any body is read, and a body that grows past it (chunked, or lying about
its length) is cut off with a 413 as soon as it does.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Iterable
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import PayloadTooLarge, error_body, shorten
from .keys import AuthThrottle, client_address, encode_keys, key_problem
from .metrics import Metrics, route_label

__all__ = ["OPEN_PATHS", "SECURITY_HEADERS", "BodyTooLarge", "ServiceMiddleware", "needs_key"]

log = logging.getLogger("poolserve")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

# Open without an API key: the probes (a load balancer or kubelet has no key), and the two redirects to
# the page, which guards itself.
OPEN_PATHS = frozenset({"/health", "/ready", "/v2/health/live", "/v2/health/ready", "/", "/favicon.ico"})
UI_PREFIX = "/ui"
# On every response: no MIME sniffing, no framing by other sites (clickjacking), no referrer leaks.
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
)


def needs_key(path: str) -> bool:
    """Whether a request to ``path`` needs an API key (when keys are set)."""
    return path not in OPEN_PATHS and path != UI_PREFIX and not path.startswith(UI_PREFIX + "/")


class BodyTooLarge(PayloadTooLarge):
    """Raised from ``receive`` when the body passes the limit mid-stream."""


class ServiceMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        metrics: Metrics,
        api_keys: Iterable[str] = (),
        throttle: AuthThrottle | None = None,
        trusted_proxies: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.api_keys = encode_keys(api_keys)
        self.throttle = throttle
        self.trusted_proxies = frozenset(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id, content_length, authorization = None, None, None
        forwarded: list[str] = []
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                text = value.decode("latin-1")
                request_id = text if _REQUEST_ID.match(text) else None
            elif name == b"content-length":
                content_length = value
            elif name == b"authorization":
                authorization = value
            elif name == b"x-forwarded-for":
                forwarded.append(value.decode("latin-1"))
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
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [header for header in SECURITY_HEADERS if header[0] not in present]
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        async def reply(code: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
            # The Open Inference Protocol's routes (/v2...) write errors as {"error": ...} (issue 11).
            key = "error" if scope["path"] == "/v2" or scope["path"].startswith("/v2/") else "detail"
            body = error_body(key, detail)  # under 4 KiB, whatever the detail
            await tracked_send(
                {
                    "type": "http.response.start",
                    "status": code,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", b"%d" % len(body)),
                        *(extra or []),
                    ],
                }
            )
            await tracked_send({"type": "http.response.body", "body": body})

        try:
            if self.api_keys and scope["method"] != "OPTIONS" and needs_key(scope["path"]):
                peer = (scope.get("client") or (None,))[0]
                client = client_address(peer, ",".join(forwarded), self.trusted_proxies)
                wait = self.throttle.retry_after(client) if self.throttle is not None else None
                if wait is not None:
                    log.warning("request %s from %s: refused, too many wrong API keys", request_id, client)
                    detail = f"too many wrong API keys from this address; retry after {wait} s"
                    await reply(429, detail, [(b"retry-after", b"%d" % wait)])
                    return
                problem = key_problem(authorization, self.api_keys)
                if problem is not None:
                    if problem.wrong_key:
                        log.warning("request %s from %s: wrong API key refused", request_id, client)
                        if self.throttle is not None:
                            self.throttle.failed(client)
                    await reply(401, problem.detail, [(b"www-authenticate", problem.challenge.encode())])
                    return
            if content_length is not None:
                try:
                    length = int(content_length)
                except ValueError:
                    length = -1
                if length < 0:
                    await reply(400, f"invalid Content-Length {shorten(content_length.decode('latin-1'))}")
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
