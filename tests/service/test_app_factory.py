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
