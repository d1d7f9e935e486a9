"""The Gradio page at ``/ui``, built from the poolcore registry and mounted on the service's own app.

``mount_ui(app)`` is called at the end of ``service.app.create_app``; ``/`` redirects to ``/ui/``.
"""

from __future__ import annotations

import os

# Gradio reads this at import time; the page must never phone home.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr
from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse

from .handlers import Runtime
from .imaging import ASSETS

__all__ = ["PATH", "build_ui", "mount_ui"]

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
    # Gradio's own queue runs the sync handlers in its thread pool; as many at once as the route allows.
    blocks.queue(default_concurrency_limit=getattr(settings, "max_concurrency", None) or 2)

    @app.get("/", include_in_schema=False)
    def root(request: Request) -> RedirectResponse:
        return RedirectResponse(request.scope.get("root_path", "") + PATH + "/")

    max_body = getattr(settings, "max_body_bytes", None)
    return gr.mount_gradio_app(
        app,
        blocks,
        path=PATH,
        footer_links=["gradio", "settings"],
        allowed_paths=[str(ASSETS)],
        max_file_size=max_body,
        ssr_mode=False,
        mcp_server=False,
        theme=THEME,
        css=CSS,
    )
