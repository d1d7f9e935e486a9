"""The Gradio page at ``/ui``, built from the poolcore registry and mounted on the service's own app.

``mount_ui(app)`` is called at the end of ``service.app.create_app``; ``/`` redirects to ``/ui/`` and
``/favicon.ico`` to Gradio's icon. Everything under ``/ui`` goes through :class:`.guard.UIGuard` (file
paths, upload cache, unknown functions, API keys); :class:`.cache.UICache` bounds Gradio's upload cache.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

# Gradio reads this at import time; the page must never phone home.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import anyio.to_thread
import gradio as gr
from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from starlette.routing import Mount

from .cache import UICache
from .guard import UIGuard, close_upstream_hole, file_paths, key_checker, mark_page_code
from .handlers import Runtime
from .imaging import ASSETS

__all__ = ["PATH", "build_ui", "mount_ui"]

LOGIN_MESSAGE = "Log in with an API key of this server as the password; any user name will do."

PATH = "/ui"


def build_ui(app: FastAPI) -> gr.Blocks:
    """The page's Blocks for ``app`` (its handlers read ``app.state.device`` and settings at call time)."""
    from .page import build_blocks

    return build_blocks(Runtime.of_state(app.state))


def mount_ui(app: FastAPI) -> FastAPI:
    """Mount the page at ``/ui`` on ``app``, add ``/`` → ``/ui/``, and return the app to serve."""
    from .page import CSS, THEME

    settings = getattr(app.state, "settings", None)
    blocks = build_ui(app)
    # Gradio's queue runs the sync handlers in anyio worker threads, as many at once as the route allows;
    # their torch work also takes a token of the route's own limiter (handlers.Runtime.slot), so page and
    # route together stay within max_concurrency.
    blocks.queue(default_concurrency_limit=getattr(settings, "max_concurrency", None) or 2)

    @app.get("/", include_in_schema=False)
    def root(request: Request) -> RedirectResponse:
        return RedirectResponse(request.scope.get("root_path", "") + PATH + "/")

    # Browsers ask the origin for /favicon.ico whatever the page says; Gradio serves its icon under /ui.
    @app.get("/favicon.ico", include_in_schema=False)
    def favicon(request: Request) -> RedirectResponse:
        return RedirectResponse(request.scope.get("root_path", "") + PATH + "/favicon.ico")

    max_body = getattr(settings, "max_body_bytes", None)
    keys: tuple[str, ...] = getattr(settings, "api_key_list", ())
    gr.mount_gradio_app(
        app,
        blocks,
        path=PATH,
        footer_links=["gradio", "settings"],
        run_history=False,  # its routes can reach out to the Hugging Face Hub; the page has no use for them
        auth=key_checker(keys) if keys else None,
        auth_message=LOGIN_MESSAGE,
        allowed_paths=[str(ASSETS)],
        max_file_size=max_body,
        ssr_mode=False,
        mcp_server=False,
        theme=THEME,
        css=CSS,
    )
    close_upstream_hole(blocks)
    mark_page_code(blocks)
    mount = next(r for r in app.router.routes if isinstance(r, Mount) and r.path == PATH)
    gradio_app: Any = mount.app
    cache = UICache(
        gradio_app.uploaded_file_dir,
        max_bytes=getattr(settings, "ui_cache_bytes", 1024**3),
        max_age=getattr(settings, "ui_cache_max_age", 3600.0),
        pinned=_page_files(blocks),
        on_evict=lambda path: _forget(blocks, path),
    )
    mount.app = UIGuard(
        gradio_app,
        blocks=blocks,
        gradio_app=gradio_app,
        cache=cache,
        keys=keys,
        served=[str(ASSETS)],
        max_json_bytes=getattr(settings, "max_json_bytes", 8 * 1024 * 1024),
        # The same throttle on key guessing as HTTP and gRPC (service.keys), and issue 17's page settings.
        throttle=getattr(app.state, "auth_throttle", None),
        trusted_proxies=getattr(settings, "trusted_proxy_list", ()),
        origins=getattr(settings, "cors_origin_list", ()),
        session_seconds=getattr(settings, "ui_session_seconds", 12 * 3600.0),
    )
    app.state.ui_cache = cache

    gradio_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        async with gradio_lifespan(app) as state:
            cache.start()
            try:
                yield state
            finally:
                await anyio.to_thread.run_sync(cache.stop)

    app.router.lifespan_context = lifespan
    return app


def _page_files(blocks: gr.Blocks) -> list[str]:
    """The files the built page refers to (the examples Gradio copied into its cache): kept while it runs."""
    kept = [p for p in file_paths(blocks.config) if isinstance(p, str)]
    for block in blocks.blocks.values():
        kept.extend(getattr(block, "keep_in_cache", ()))
    return kept


def _forget(blocks: gr.Blocks, path: str) -> None:
    """Drop an evicted file from Gradio's sets of files it created, which otherwise only ever grow."""
    for files in blocks.temp_file_sets:
        files.discard(path)
