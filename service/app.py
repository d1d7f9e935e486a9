"""App factory (placeholder: the service issue fills in routes, codecs, settings and metrics)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI

from .ui import mount_ui

__all__ = ["app", "create_app"]


def create_app() -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        yield

    app = FastAPI(title="poolserve", lifespan=lifespan)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return mount_ui(app)


app = create_app()
