"""Method discovery and operations: ``/methods``, ``/health``, ``/ready``, ``/metrics``."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response

import poolcore
from poolcore.registry import ALIASES

from ..docs import TRANSPORT_ERRORS, error_responses
from ..pooling import MAX_SEED

__all__ = ["describe_method", "info_router"]


def _defaults(model: type[BaseModel]) -> dict[str, Any]:
    return {
        name: field.get_default(call_default_factory=True)
        for name, field in model.model_fields.items()
        if not field.is_required()
    }


def describe_method(name: str) -> dict[str, Any]:
    """Everything a client needs to call one method, from its registry entry."""
    spec = poolcore.get_spec(name)
    return {
        "name": spec.name,
        "description": spec.description,
        # How to choose and read it: the formula (LaTeX), the paper, what it is for, train versus eval.
        "guide": dataclasses.asdict(spec.guide),
        "base": spec.base,
        "aliases": [alias for alias, target in ALIASES.items() if target == spec.name],
        "fixed": dict(spec.fixed),
        "schema": spec.params.model_json_schema(),
        "defaults": _defaults(spec.params),
        "run": {
            "mode": {"type": "string", "enum": ["eval", "train"], "default": "eval"},
            "seed": {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_SEED,
                "default": None,
                "used": spec.random,
                "description": (
                    "Seeds the sampling in train mode; without one the server draws a seed and returns "
                    "it, and the same request with that seed gives the same bytes."
                    if spec.random
                    else "This method does not sample; the seed is ignored and reported as null."
                ),
            },
            "random": spec.random,
            "takes_training": spec.takes_training,
        },
    }


def info_router() -> APIRouter:
    router = APIRouter()

    # /health and /ready answer without an API key; every route is behind the middleware's checks.
    guarded = error_responses(*TRANSPORT_ERRORS)
    open_route = error_responses(*(code for code in TRANSPORT_ERRORS if code != 401))

    @router.get(
        "/methods",
        tags=["discovery"],
        summary="Every method: description, parameters, defaults",
        responses=guarded,
    )
    async def list_methods(request: Request) -> dict[str, Any]:
        settings = request.app.state.settings
        return {
            "methods": [describe_method(name) for name in poolcore.methods()],
            "aliases": dict(ALIASES),
            # What a request may be: over these it gets a 413 before the work (or the allocation) starts.
            "limits": {
                "max_body_bytes": settings.max_body_bytes,
                "max_json_bytes": min(settings.max_json_bytes, settings.max_body_bytes),
                "max_elements": settings.max_elements,
                "max_image_pixels": settings.max_image_pixels,
                "max_jpeg_scans": settings.max_jpeg_scans,
                # Over it the answer is 413 (decided before encoding): ask for .npy, or pool more.
                "max_response_bytes": settings.max_response_bytes,
                "body_timeout_seconds": settings.body_timeout,
            },
        }

    @router.get("/health", tags=["operations"], summary="Liveness: the process answers", responses=open_route)
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    ready_body = {
        "type": "object",
        "required": ["status", "device"],
        "properties": {
            "status": {"type": "string", "enum": ["ready", "starting", "draining"]},
            "device": {"type": ["string", "null"]},
        },
    }

    @router.get(
        "/ready",
        tags=["operations"],
        summary="Readiness: device initialised and warm-up done, not draining",
        responses={
            200: {"description": "Ready.", "content": {"application/json": {"schema": ready_body}}},
            503: {
                "description": "Starting, or draining for shutdown: not ready for traffic.",
                "content": {"application/json": {"schema": ready_body}},
            },
            **open_route,
        },
    )
    async def ready(request: Request) -> JSONResponse:
        state = request.app.state
        draining = bool(getattr(state, "draining", False))
        is_ready = bool(getattr(state, "ready", False)) and not draining
        device = str(getattr(state, "device", "")) or None
        status = "draining" if draining else "ready" if is_ready else "starting"
        body = {"status": status, "device": device}
        return JSONResponse(body, status_code=200 if is_ready else 503)

    @router.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={
            200: {"description": "Prometheus text format.", "content": {CONTENT_TYPE_LATEST: {}}},
            **guarded,
        },
    )
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router
