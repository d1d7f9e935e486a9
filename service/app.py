"""App factory: ``create_app(settings)`` builds a fresh app; ``poolserve`` serves one, and so does
``uvicorn --factory service.app:create_served_app``.

Nothing is built at import, and building is cheap: the page's first values come from load events, and the
device is resolved, and a warm-up op run, in the lifespan.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
import torch
from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi_offline import FastAPIOffline
from starlette.middleware.cors import CORSMiddleware

from .codecs import Limits
from .config import Settings, get_settings
from .docs import error_responses, oip_error_responses, pool_operation, v2_paths
from .errors import install_error_handlers
from .gc_tuning import freeze_heap, unfreeze_heap
from .keys import AuthThrottle
from .limits import WorkLimits
from .memory import reuse_freed_memory
from .metrics import Metrics
from .middleware import ServiceMiddleware, needs_key
from .pooling import run_pool
from .routes import info_router, pool_routes
from .routes.v2 import v2_routes
from .workers import TorchWorkers

__all__ = ["create_app", "create_served_app", "resolve_device"]

log = logging.getLogger("poolserve")


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; an explicit CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"POOLSERVE_DEVICE={name} but CUDA is not available; use auto or cpu")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise RuntimeError(f"POOLSERVE_DEVICE={name} but only {torch.cuda.device_count()} CUDA device(s)")
    return device


def _warm_up(device: torch.device) -> None:
    run_pool(torch.ones(1, 1, 4, 4), "avg", {"kernel_size": 2}, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _configure_process(settings: Settings) -> None:
    """The process-wide settings, once per served process (see ``create_app``)."""
    if settings.torch_threads is not None:
        # Before any batch: the default every thread starts with (the workers then set their share per
        # batch, which also moves that default: docs/configuration.md).
        torch.set_num_threads(settings.torch_threads)
    if settings.reuse_freed_memory:
        reuse_freed_memory()


def _document_pool_route(app: FastAPI, settings: Settings) -> None:
    """Add ``POST /pool/{method}`` (a plain Starlette route, which FastAPI leaves out) to the app's
    OpenAPI schema, first among the paths, and the bearer scheme when API keys are set; FastAPI's
    documented way of extending the schema."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schema["paths"] = {
                "/pool/{method}": {"post": pool_operation()},
                **schema.get("paths", {}),
                **v2_paths(),
            }
            if settings.api_key_list:
                schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
                schemes["apiKey"] = {"type": "http", "scheme": "bearer", "description": "POOLSERVE_API_KEYS"}
                for path, operations in schema["paths"].items():
                    if needs_key(path):
                        v2 = path == "/v2" or path.startswith("/v2/")
                        throttled = oip_error_responses(401, 429) if v2 else error_responses(401, 429)
                        for operation in operations.values():
                            operation["security"] = [{"apiKey": []}]
                            # With keys on, any keyed route may answer 401, and 429 to an address that
                            # sent too many wrong keys (service.keys.AuthThrottle).
                            responses = operation.setdefault("responses", {})
                            for code, response in throttled.items():
                                responses.setdefault(str(code), response)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None, *, configure_process: bool = False) -> FastAPI:
    """A new app; ``settings`` default to the environment's (``POOLSERVE_*``).

    ``configure_process``: at start-up, also apply the settings that change the whole process, not just
    this app: glibc's heap thresholds (``reuse_freed_memory``) and torch's thread count
    (``torch_threads``). Only for the app a server process exists to serve (``app`` below); a process
    that hosts other work too, such as a test session, keeps its own (docs/configuration.md).
    """
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.ready = False
        app.state.device = resolve_device(settings.device)
        app.state.limits = Limits(settings.max_elements, settings.max_image_pixels, settings.max_jpeg_scans)
        app.state.work_limits = WorkLimits.of(settings)
        if configure_process:
            _configure_process(settings)
        # All torch work, the route's and the UI's, runs in these threads: max_concurrency at once,
        # sharing torch's intra-op threads between them.
        workers = TorchWorkers(
            settings.max_concurrency,
            max_queue=settings.max_queue,
            queue_timeout=settings.request_timeout,
            # A request still running this long is answered 503 and its thread replaced (it may be stuck
            # in C code); see service.workers.
            run_timeout=settings.request_timeout,
            max_stuck=settings.max_stuck_workers,
            intra_op_threads=settings.torch_threads,
        )
        app.state.workers = workers
        app.state.metrics.watch_queue(workers.pending)
        await workers.run(_warm_up, app.state.device)
        grpc_server = None
        if settings.grpc_port is not None:
            # Imported only when asked for: its protobuf stubs claim the protocol's message names for this
            # process, which other OIP stubs (tritonclient's, in the tests) also claim.
            from .grpc_server import start_grpc

            grpc_server = await start_grpc(app.state, settings)
        frozen_before = freeze_heap()  # the start-up heap, out of the cycle collector's walks (gc_tuning)
        app.state.ready = True
        frozen = gc.get_freeze_count()
        log.info("poolserve ready on %s (%d start-up objects frozen)", app.state.device, frozen)
        # Whether keys are on, and how many; never the keys themselves.
        if settings.api_key_list:
            log.info(
                "API keys on: %d key(s); every route but the probes needs one", len(settings.api_key_list)
            )
        else:
            log.info("API keys off: every route is open (POOLSERVE_API_KEYS is empty)")
        try:
            yield
        finally:
            app.state.ready = False
            unfreeze_heap(frozen_before)
            if grpc_server is not None:
                # New RPCs are refused; those in flight get as long as uvicorn gives HTTP requests.
                await grpc_server.stop(settings.body_timeout + settings.request_timeout)
            # Let accepted work finish (results still reach this loop), waiting off the event loop.
            workers.close()
            await anyio.to_thread.run_sync(workers.join)

    # FastAPIOffline serves Swagger UI and ReDoc from files in the wheel: nothing is fetched from a CDN.
    app = FastAPIOffline(
        title="poolserve",
        summary="Pooling operators (avg, max, stochastic, mixed, Lp/GeM, adaptive, global) over HTTP.",
        description="`POST /pool/{method}` with JSON, .npy, an image or a multipart upload; `GET /methods` "
        'lists every method with its parameters. Errors are `{"detail": "..."}`.',
        version="0.1.0",
        lifespan=lifespan,
        # Off unless asked for: FastAPI checks for configured providers on every request (config.py).
        telemetry=None if settings.opentelemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.ready = False
    app.state.metrics = Metrics()
    # One throttle on key guessing for every protocol: HTTP, the page's login and gRPC (service.keys).
    app.state.auth_throttle = AuthThrottle(on_refused=app.state.metrics.auth_throttled.inc)
    install_error_handlers(app)
    app.add_middleware(
        ServiceMiddleware,
        max_body_bytes=settings.max_body_bytes,
        metrics=app.state.metrics,
        api_keys=settings.api_key_list,
        throttle=app.state.auth_throttle,
        trusted_proxies=settings.trusted_proxy_list,
    )
    if settings.cors_origin_list:
        # Outside ServiceMiddleware (added later, so it wraps it): preflights carry no API key.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origin_list),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Accept", "X-Request-ID"],
            expose_headers=["X-Request-ID", "X-Pool-Seed", "X-Pool-Shape", "X-Pool-Params", "Retry-After"],
        )
    # The routes themselves, not include_router: FastAPI dispatches an included router through a wrapper
    # on every request, which cost a small /pool request about a fifth of its event-loop time.
    # First in the list, ahead of the docs pages FastAPI added: the router tries routes in order.
    app.router.routes[:0] = [*pool_routes(), *v2_routes(), *info_router().routes]
    _document_pool_route(app, settings)
    if not settings.ui:

        @app.get("/", include_in_schema=False)
        def root(request: Request) -> RedirectResponse:
            return RedirectResponse(request.scope.get("root_path", "") + "/docs")

        return app
    from .ui import mount_ui  # here: Gradio is two thirds of the start-up; an API-only server goes without

    return mount_ui(app)


def create_served_app() -> FastAPI:
    """The app a server process serves: :func:`create_app` with the environment's settings and the
    process-wide settings applied (``uvicorn --factory service.app:create_served_app``)."""
    return create_app(configure_process=True)
