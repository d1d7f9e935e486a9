"""The Open Inference Protocol (KServe v2) over REST, beside ``/pool``: every method and preset is a model.

- ``GET /v2``: server metadata; ``GET /v2/health/live`` and ``/v2/health/ready`` (as ``/health`` and
  ``/ready``, open without an API key);
- ``GET /v2/models/{name}[/versions/{v}]``: model metadata; ``.../ready``: model readiness;
- ``POST /v2/models/{name}[/versions/{v}]/infer``: JSON, or the binary tensor extension both ways.

The infer route reads the raw body whatever its Content-Type (tritonclient sends none), with the JSON body
limit unless ``Inference-Header-Content-Length`` says binary data follows; it then runs like ``/pool``, in
the torch worker threads and the same batches (:func:`service.pooling.answer_jobs`). Errors are the
protocol's ``{"error": "<message>"}``. Plain Starlette routes, for the reason
:func:`service.routes.pool.pool_routes` gives.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..body import client_gone, read_body
from ..codecs import oip
from ..errors import error_body
from ..inference import (
    InferJob,
    error_status,
    is_ready,
    model_metadata,
    model_spec,
    server_metadata,
)
from ..limits import RESPONSE_FRAMING, Encoding, WorkLimits, check_response
from ..pooling import PoolOutcome, answer_jobs
from ..workers import CallerGone

__all__ = ["v2_routes"]


def _json(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


def _error(error: BaseException, request: Request) -> Response:
    problem = error_status(error, request.scope.get("state", {}).get("request_id"))
    response = Response(error_body("error", problem.message), problem.status, media_type="application/json")
    response.headers.update(problem.headers)  # e.g. Retry-After on a 503
    return response


async def server_metadata_route(request: Request) -> Response:
    return _json(server_metadata())


async def live(request: Request) -> Response:
    return _json({"live": True})


async def ready(request: Request) -> Response:
    ready_now = is_ready(request.app.state)
    return _json({"ready": ready_now}, 200 if ready_now else 503)


async def model_metadata_route(request: Request) -> Response:
    try:
        spec = model_spec(request.path_params["name"], request.path_params.get("version"))
    except Exception as error:
        return _error(error, request)
    return _json(model_metadata(spec))


async def model_ready(request: Request) -> Response:
    try:
        spec = model_spec(request.path_params["name"], request.path_params.get("version"))
    except Exception as error:
        return _error(error, request)
    ready_now = is_ready(request.app.state)
    return _json({"name": spec.name, "ready": ready_now}, 200 if ready_now else 503)


def _encode(limits: WorkLimits, outcome: PoolOutcome, decoded: oip.Decoded) -> Response:
    # 413 before encoding; names, shape and keys around the tensor take under RESPONSE_FRAMING bytes.
    rest = {"id": decoded.request_id, "parameters": oip.reported_parameters(outcome.params)}
    encoding: Encoding = "raw" if decoded.binary_output else "json_flat"
    check_response(outcome.output, encoding, limits, rest, RESPONSE_FRAMING)
    out = oip.encode_rest(
        outcome.output, outcome.method, outcome.params, decoded.request_id, decoded.binary_output
    )
    response = Response(out.body, media_type=out.media_type)
    if out.header_length is not None:
        response.raw_headers.append((b"inference-header-content-length", str(out.header_length).encode()))
    return response


async def infer(request: Request) -> Response:
    try:
        spec = model_spec(request.path_params["name"], request.path_params.get("version"))
        request.state.pool_method = spec.name
        state = request.app.state
        header = request.headers.get("inference-header-content-length")
        # JSON alone has the JSON limit; with binary data only its JSON header does (checked in decode).
        body = await read_body(request, None if header is not None else state.settings.max_json_bytes)
        decode = functools.partial(oip.decode_rest, body, header, state.limits, state.settings.max_json_bytes)
        encode = functools.partial(_encode, state.work_limits)
        job = InferJob(spec.name, decode, encode, state.device, state.metrics, state.work_limits)
        response: Response = await state.workers.run_batched(
            answer_jobs, job, len(body), gone=lambda: client_gone(request)
        )
    except CallerGone:
        request.app.state.metrics.observe_shed("client_gone")
        raise ClientDisconnect() from None  # nobody to answer (the middleware logs a 499)
    except ClientDisconnect:
        raise  # the middleware's to log: nobody is left to answer
    except Exception as error:
        return _error(error, request)
    return response


def v2_routes() -> list[BaseRoute]:
    routes: list[BaseRoute] = [
        Route("/v2", server_metadata_route, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
    ]
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes += [
            Route(prefix, model_metadata_route, methods=["GET"]),
            Route(f"{prefix}/ready", model_ready, methods=["GET"]),
            Route(f"{prefix}/infer", infer, methods=["POST"]),
        ]
    return routes
