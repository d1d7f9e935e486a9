"""The service's one error boundary: every failure becomes ``{"detail": "<message>"}``.

Our own checks raise :class:`ServiceError` with an HTTP status. poolcore's ``UnknownMethodError`` is a 404
and its ``ValueError``/``TypeError`` (bad parameters, bad input for that operator) a 422; the pool route
converts those where it calls poolcore, so a stray ``ValueError`` from a bug elsewhere still ends up as a
logged, generic 500 (see :mod:`service.middleware`).
"""

from __future__ import annotations

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

import poolcore

__all__ = [
    "BadRequest",
    "NotAcceptable",
    "PayloadTooLarge",
    "ServiceError",
    "ServiceUnavailable",
    "Unprocessable",
    "UnsupportedMediaType",
    "error_response",
    "install_error_handlers",
    "shorten",
]

_SHOWN = 64  # characters of a client's value that a message repeats


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


def shorten(value: object) -> str:
    """``repr(value)`` cut to its first 64 characters plus "…": a message names what the client sent
    without echoing a large body back."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"


def error_response(status_code: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps({"detail": detail}),
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
    async def service_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, ServiceError) else 400
        return error_response(status, str(exc), headers=getattr(exc, "headers", None))

    async def unknown_method(request: Request, exc: Exception) -> Response:
        return error_response(404, str(exc))

    async def validation_error(request: Request, exc: Exception) -> Response:
        detail = _validation_detail(exc) if isinstance(exc, RequestValidationError) else str(exc)
        return error_response(422, detail)

    async def http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, StarletteHTTPException):
            return error_response(500, "internal server error")
        return error_response(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(poolcore.UnknownMethodError, unknown_method)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)


class ServiceUnavailable(ServiceError):
    """503: the server can't take the request now (queue full, shutting down, device fault); the client
    may retry after ``retry_after`` seconds, which the answer's ``Retry-After`` header says."""

    status_code = 503

    def __init__(self, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after)}
