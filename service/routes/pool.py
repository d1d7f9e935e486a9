"""``POST /pool/{method}``: one route for every registered method and preset.

The handler only reads the body; decoding, pooling and encoding run in a worker thread, at most
``max_concurrency`` at once, so the event loop stays free for ``/health`` and other requests.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Request
from starlette.responses import Response

import poolcore

from .. import codecs
from ..body import read_body
from ..codecs import Kind, Limits
from ..docs import pool_openapi
from ..params import gather, split_run_options
from ..pooling import poolcore_errors, run_limited, run_pool

__all__ = ["pool_router"]


def _method_enum(schema: dict[str, Any]) -> None:
    schema["enum"] = poolcore.methods()  # documented, not validated: an unknown name is a 404


MethodName = Annotated[
    str,
    Path(description="A registered method or preset (see GET /methods).", json_schema_extra=_method_enum),
]
_EARLY_KIND: dict[str, Kind] = {"json": "json", "npy": "npy", "image": "png"}


def _process(
    method: str,
    body: bytes,
    content_type: str | None,
    accept: str | None,
    query: list[tuple[str, str]],
    limits: Limits,
    request: Request,
) -> Response:
    """decode → run → encode, in a worker thread."""
    decoded = codecs.decode(body, content_type, limits)
    kind = codecs.negotiate(accept, decoded.kind)
    params, mode, seed = split_run_options(gather(query, decoded.form, decoded.params))
    state = request.app.state
    with poolcore_errors():
        outcome = run_pool(decoded.tensor, method, params, mode=mode, seed=seed, device=state.device)
    state.metrics.observe_pool(outcome.method, outcome.elapsed_ms / 1e3)
    headers = {
        "X-Pool-Method": outcome.method,
        "X-Pool-Params": orjson.dumps(outcome.params).decode(),
        "X-Pool-Shape": ",".join(str(s) for s in outcome.output.shape),
        "X-Pool-Dtype": str(outcome.output.dtype).removeprefix("torch."),
        "X-Pool-Device": outcome.device,
        "X-Pool-Elapsed-Ms": f"{outcome.elapsed_ms:.3f}",
    }
    if outcome.params.get("seed") is not None:
        headers["X-Pool-Seed"] = str(outcome.params["seed"])
    return codecs.encode(kind, outcome.output, outcome.method, outcome.params, headers)


def pool_router() -> APIRouter:
    """Built per app, so the OpenAPI description lists the methods registered at that time."""
    router = APIRouter(tags=["pooling"])

    @router.post(
        "/pool/{method}",
        summary="Pool a tensor or an image with one method",
        response_class=Response,
        **pool_openapi(),
    )
    async def pool(
        method: MethodName,
        request: Request,
    ) -> Response:
        spec = poolcore.get_spec(method)  # 404 listing the known names
        request.state.pool_method = spec.name
        content_type = request.headers.get("content-type")
        family = codecs.request_family(content_type)  # 415 before reading the body
        accept = request.headers.get("accept")
        if family in _EARLY_KIND:
            codecs.negotiate(accept, _EARLY_KIND[family])  # 406 before reading the body
        start = time.perf_counter()
        body = await read_body(request)  # the middleware enforces the size limit while it streams in
        read = time.perf_counter()
        state = request.app.state
        limits = Limits(state.settings.max_elements, state.settings.max_image_pixels)
        query = list(request.query_params.multi_items())
        result: Response = await run_limited(
            state.limiter,
            state.executor,
            _process,
            spec.name,
            body,
            content_type,
            accept,
            query,
            limits,
            request,
        )
        done = time.perf_counter()
        # Where the time went: reading the body, then decode + pool + encode in a worker (queueing included).
        result.headers["Server-Timing"] = (
            f"read;dur={(read - start) * 1e3:.3f}, run;dur={(done - read) * 1e3:.3f}"
        )
        return result

    return router
