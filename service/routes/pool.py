"""``POST /pool/{method}``: one route for every registered method and preset.

The handler only reads the body; decoding, pooling and encoding run in the app's torch worker threads
(:mod:`service.workers`), so the event loop stays free for ``/health`` and other requests. Requests that
queue up together are handled as one batch (:func:`_answer_batch`): small same-shaped ones that ask the
same deterministic question share one operator call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

import poolcore

from .. import codecs
from ..body import client_gone, read_body
from ..codecs import Kind, Limits
from ..errors import ServiceUnavailable
from ..limits import WorkLimits, check_response
from ..metrics import Metrics
from ..params import gather, split_run_options
from ..pooling import PoolOutcome, PoolRequest, answer_jobs
from ..workers import CallerGone

__all__ = ["pool", "pool_routes"]


@dataclass(frozen=True)
class _Job:
    """What a worker needs to answer one request (a :class:`service.pooling.Job`)."""

    method: str
    body: bytes | bytearray
    content_type: str | None
    accept: str | None
    query: list[tuple[str, str]]
    limits: Limits
    device: Any
    metrics: Metrics
    work: WorkLimits  # output size and working memory

    def decode(self) -> tuple[Kind, PoolRequest]:
        decoded = codecs.decode(self.body, self.content_type, self.limits)
        kind = codecs.negotiate(self.accept, decoded.kind)
        params, mode, seed = split_run_options(gather(self.query, decoded.form, decoded.params))
        if decoded.kind == "png" and "dims" in poolcore.get_spec(self.method).params.model_fields:
            params.setdefault("dims", 2)  # an image is (C, H, W): 2d pooling, whatever the window's form
        return kind, PoolRequest(decoded.tensor, self.method, params, mode, seed, self.device, self.work)

    def encode(self, kind: Kind, outcome: PoolOutcome) -> Response:
        rest = codecs.json.header(outcome.output, outcome.method, outcome.params) if kind == "json" else None
        check_response(outcome.output, kind, self.work, rest)  # 413 before encoding
        response = codecs.encode(kind, outcome.output, outcome.method, outcome.params)
        response.raw_headers.extend(_run_headers(outcome))
        return response


def _run_headers(outcome: PoolOutcome) -> list[tuple[bytes, bytes]]:
    """The headers that describe a run."""
    headers = [
        (b"x-pool-method", outcome.method.encode()),
        (b"x-pool-params", orjson.dumps(outcome.params)),
        (b"x-pool-shape", ",".join(str(s) for s in outcome.output.shape).encode()),
        (b"x-pool-dtype", str(outcome.output.dtype).removeprefix("torch.").encode()),
        (b"x-pool-device", outcome.device.encode()),
        (b"x-pool-elapsed-ms", f"{outcome.elapsed_ms:.3f}".encode()),
        (b"x-pool-batch", str(outcome.batch).encode()),
    ]
    if outcome.params.get("seed") is not None:
        headers.append((b"x-pool-seed", str(outcome.params["seed"]).encode()))
    return headers


async def pool(request: Request) -> Response:
    """``POST /pool/{method}``: read the body here, answer it in a worker thread (``answer_jobs``)."""
    spec = poolcore.get_spec(request.path_params["method"])  # 404 listing the known names
    request.state.pool_method = spec.name
    content_type = request.headers.get("content-type")
    family = codecs.request_family(content_type)  # 415 before reading the body
    accept = request.headers.get("accept")
    if family in codecs.FAMILY_KINDS:
        codecs.negotiate(accept, codecs.FAMILY_KINDS[family])  # 406 before reading the body
    state = request.app.state
    # JSON grows several times over in the parser, so it has a lower limit than binary bodies; the
    # middleware enforces the service-wide one, both while the body streams in.
    limit = state.settings.max_json_bytes if family == "json" else None
    start = time.perf_counter()
    body = await read_body(request, limit)
    read = time.perf_counter()
    query = list(request.query_params.multi_items()) if request.scope["query_string"] else []
    job = _Job(
        spec.name,
        body,
        content_type,
        accept,
        query,
        state.limits,
        state.device,
        state.metrics,
        state.work_limits,
    )
    try:
        result: Response = await state.workers.run_batched(
            answer_jobs, job, len(body), gone=lambda: client_gone(request)
        )
    except CallerGone:
        state.metrics.observe_shed("client_gone")
        raise ClientDisconnect() from None  # nobody to answer (the middleware logs a 499)
    except ServiceUnavailable as error:  # the workers': queue full, queued too long, shutting down
        state.metrics.observe_shed(getattr(error, "reason", "unavailable"))
        raise
    done = time.perf_counter()
    # Where the time went: reading the body, then decode + pool + encode in a worker (queueing included).
    timing = f"read;dur={(read - start) * 1e3:.3f}, run;dur={(done - read) * 1e3:.3f}"
    result.raw_headers.append((b"server-timing", timing.encode("latin-1")))
    return result


def pool_routes() -> list[BaseRoute]:
    """``POST /pool/{method}`` as a plain Starlette route. It takes only the Request, so FastAPI's
    per-request machinery (dependency solving, exit stacks, telemetry) would add nothing but time: about
    a third of a small request's cost on the event loop. Its OpenAPI entry is
    :func:`service.docs.pool_operation`, which the app adds to the schema."""
    return [Route("/pool/{method}", pool, methods=["POST"], name="pool")]
