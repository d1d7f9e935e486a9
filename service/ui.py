"""The Gradio page at /ui (placeholder until the UI lands): ``mount_ui(app)`` is called by ``create_app``."""

from __future__ import annotations

from fastapi import FastAPI

__all__ = ["mount_ui"]


def mount_ui(app: FastAPI) -> FastAPI:
    """Mount the UI on ``app`` and return the app to serve (gradio's mount returns a new one)."""
    return app
