"""The app is built by its factory, when asked: importing ``service.app`` builds nothing (no app, no page),
and ``uvicorn --factory service.app:create_app`` serves it."""

from __future__ import annotations

import subprocess
import sys

from .support import ROOT

PROBE = """
import fastapi
built = []
original = fastapi.FastAPI.__init__
def counting(self, *args, **kwargs):
    built.append(1)
    original(self, *args, **kwargs)
fastapi.FastAPI.__init__ = counting
import service.app
assert not built, "importing service.app built an app"
assert not hasattr(service.app, "app"), "service.app still has a module-level app"
app = service.app.create_app()
assert built and "/pool/{method}" in app.openapi()["paths"]
print("ok")
"""


def test_importing_the_app_module_builds_nothing() -> None:
    run = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("ok")


HEADLESS = """
import sys
from fastapi.testclient import TestClient
from service.app import create_app
from service.config import Settings
app = create_app(Settings(device="cpu", ui=False))
assert "gradio" not in sys.modules, "an app without the page imported Gradio"
with TestClient(app) as client:
    assert client.get("/ui/").status_code == 404
    root = client.get("/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/docs", root.headers
    body = {"data": [[[[1.0, 2.0], [3.0, 4.0]]]], "params": {"kernel_size": 2}}
    pooled = client.post("/pool/avg", json=body)
    assert pooled.json()["data"] == [[[[2.5]]]], pooled.text
print("ok")
"""


def test_without_the_page_gradio_is_not_even_imported() -> None:
    """``POOLSERVE_UI=false``: an API-only server, for deployments that serve no page. The routes answer,
    ``/ui/`` is 404, ``/`` points to the API docs, and Gradio (most of the start-up time) stays out."""
    run = subprocess.run(
        [sys.executable, "-c", HEADLESS], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("ok")
