"""The service's one error table, and the clipping every error message goes through.

A client's mistake is a typed exception raised where it is found: :class:`ServiceError` and its
subclasses carry an HTTP status (:class:`InvalidInput` for what poolcore or the checks refused), and
poolcore's ``UnknownMethodError`` is a 404. :func:`describe` turns any exception into a :class:`Problem`
(HTTP status, gRPC code, message, headers); anything not in the table is a 500 with the request id, logged
once with its traceback. Each protocol only renders a Problem: ``{"detail": ...}`` for ``/pool`` and the
rest of HTTP, ``{"error": ...}`` for the inference protocol's REST routes (which say 400 where ``/pool``
says 422), gRPC status codes, and the page's error text.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

import poolcore

__all__ = [
    "BadRequest",
    "InvalidInput",
    "NotAcceptable",
    "PayloadTooLarge",
    "Problem",
    "ServiceError",
    "ServiceUnavailable",
    "Unprocessable",
    "UnsupportedMediaType",
    "clip",
    "clip_detail",
    "clip_status",
    "describe",
    "error_body",
    "error_response",
    "install_error_handlers",
    "shorten",
]

log = logging.getLogger("poolserve")

_SHOWN = 64  # characters of a client's value that a message repeats
# An error body (JSON) or gRPC status details stay under this many bytes, whatever the request was.
MAX_ERROR_BYTES = 4096
# A heap address in a library's message (``<ast.Call object at 0x7f…>``): says nothing to a client.
_ADDRESS = re.compile(r"\s*(?:object )?at 0x[0-9a-fA-F]{6,}")


class ServiceError(Exception):
    """A client error with its status code and a message that names the problem."""

    status_code = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(ServiceError):
    status_code = 400


class NotAcceptable(ServiceError):
    status_code = 406


class PayloadTooLarge(ServiceError):
    status_code = 413


class UnsupportedMediaType(ServiceError):
    status_code = 415


class Unprocessable(ServiceError):
    status_code = 422


class InvalidInput(Unprocessable, ValueError):
    """Parameters or input that poolcore or the service's own checks refused, typed where it was found: a
    422 for a client, a ``ValueError`` for a Python caller of ``run_pool``. A plain ``ValueError`` from
    anywhere else is a bug, and a 500."""


def clip(text: str) -> str:
    """``text`` cut to its first 64 characters plus "…"."""
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"


def shorten(value: object) -> str:
    """``repr(value)`` cut to its first 64 characters plus "…": a message names what the client sent
    without echoing a large body back."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's 4300-digit limit on int to str
        if not isinstance(value, int):
            return "<a value that cannot be shown>"
        return f"<an integer of about {int(abs(value).bit_length() * math.log10(2)) + 1} digits>"
    except Exception:  # a caller's object whose repr fails: the message must still be written
        return "<a value that cannot be shown>"
    return clip(text)


def _clip_to(text: str, limit: int, size: Callable[[str], int]) -> str:
    """``text`` without heap addresses, cut (with "…") so that ``size`` of it is at most ``limit``."""
    text = _ADDRESS.sub("", text)
    # Every character is at least one byte, so no more than ``limit`` of them fit.
    if len(text) <= limit and size(text) <= limit:
        return text
    low, high = 0, min(len(text), limit)  # the longest prefix that fits, by bisection
    while low < high:
        middle = (low + high + 1) // 2
        if size(text[:middle] + "…") <= limit:
            low = middle
        else:
            high = middle - 1
    return text[:low] + "…"


def _json_size(text: str) -> int:
    return len(orjson.dumps(text))


def _status_size(text: str) -> int:
    """Bytes of gRPC status details on the wire: UTF-8, percent-encoded outside printable ASCII."""
    data = text.encode("utf-8", "replace")
    return len(data) + 2 * sum(1 for b in data if b < 0x20 or b > 0x7E or b == 0x25)


def clip_detail(detail: str, key: str = "detail", *, reserve: int = 0) -> str:
    """``detail`` cut so that the error body ``{key: detail}`` is under :data:`MAX_ERROR_BYTES`, less
    ``reserve`` bytes for what a renderer adds: the last line of defence, behind the clipping of each
    client value (:func:`shorten`)."""
    # The body less the quoted string's own two quotes, which _json_size counts.
    room = MAX_ERROR_BYTES - 1 - reserve - (len(orjson.dumps({key: ""})) - 2)
    return _clip_to(detail, room, _json_size)


def clip_status(message: str) -> str:
    """``message`` cut so that it is under :data:`MAX_ERROR_BYTES` as gRPC status details."""
    return _clip_to(message, MAX_ERROR_BYTES - 1, _status_size)


def error_body(key: str, detail: str) -> bytes:
    """The JSON error body ``{key: detail}``, under :data:`MAX_ERROR_BYTES` (see :func:`clip_detail`)."""
    return orjson.dumps({key: clip_detail(detail, key)})


def error_response(status_code: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        error_body("detail", detail),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )


def _validation_detail(error: RequestValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item.get("loc", ()))
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Map our errors, FastAPI's own validation errors and HTTP errors to ``{"detail": str}``."""

    # Starlette types handlers as taking any Exception; each is registered for one class only.
    async def described(request: Request, exc: Exception) -> Response:
        problem = describe(exc, request.scope.get("state", {}).get("request_id"))
        return error_response(problem.status, problem.message, headers=dict(problem.headers))

    async def validation_error(request: Request, exc: Exception) -> Response:
        detail = _validation_detail(exc) if isinstance(exc, RequestValidationError) else str(exc)
        return error_response(422, detail)

    async def http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, StarletteHTTPException):
            return error_response(500, "internal server error")
        detail = str(exc.detail)
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            path = clip(request.url.path)
            if request.url.path.startswith("/pool/"):
                detail = (
                    f"{request.method} is not served at {path}: POST a tensor (JSON, .npy or an image) to "
                    "it; GET /methods lists the methods and their parameters"
                )
            elif allowed:
                detail = f"{request.method} is not served at {path}; use {allowed}"
        return error_response(exc.status_code, detail, headers=dict(exc.headers or {}))

    app.add_exception_handler(ServiceError, described)
    app.add_exception_handler(poolcore.UnknownMethodError, described)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)


class ServiceUnavailable(ServiceError):
    """503: the server can't take the request now (queue full, shutting down, device fault); the client
    may retry after ``retry_after`` seconds, which the answer's ``Retry-After`` header says."""

    status_code = 503

    def __init__(self, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after)}


# The gRPC code of each HTTP status a Problem can have (by name: this module does not import grpc).
GRPC_CODES: Mapping[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    406: "INVALID_ARGUMENT",
    408: "DEADLINE_EXCEEDED",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    431: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


@dataclass(frozen=True)
class Problem:
    """A failed request, as every protocol renders it."""

    status: int  # HTTP
    message: str
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def grpc_code(self) -> str:
        """The gRPC status code's name (``grpc.StatusCode[name]``)."""
        return GRPC_CODES.get(self.status, "INTERNAL")


def describe(error: BaseException, request_id: str | None = None) -> Problem:
    """The one table from exception to what the client is told. Client mistakes are typed where they are
    found; anything else is a bug: logged here, once, with its traceback and the request id, and answered
    as a 500 that names only the request id."""
    if isinstance(error, ServiceError):
        return Problem(error.status_code, error.detail, dict(getattr(error, "headers", None) or {}))
    if isinstance(error, poolcore.UnknownMethodError):
        return Problem(404, str(error))
    log.error("request %s: unhandled error", request_id, exc_info=error)
    return Problem(
        500, f"internal server error (request id {request_id})" if request_id else "internal server error"
    )
