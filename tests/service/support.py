"""Helpers shared by the service tests (plain functions, so they don't clash with other conftests).

Everything about methods is derived from the registry, so a newly registered method is covered by the
same tests without edits here.
"""

from __future__ import annotations

import io
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

import poolcore
from service.config import Settings

__all__ = [
    "HEADLESS",
    "LIMITS",
    "ROOT",
    "LiveServer",
    "default_params",
    "free_port",
    "headless_settings",
    "live_server",
    "live_server_process",
    "npy_bytes",
    "png_bytes",
    "query_string",
    "reference",
    "test_settings",
]

ROOT = Path(__file__).resolve().parents[2]
# Small limits so the over-limit cases stay fast; every normal case is far below them.
LIMITS = {"max_body_bytes": 1 << 20, "max_elements": 1 << 18, "max_image_pixels": 1 << 16}
# A server without the page, for tests of other protocols and of limits that do not involve it: it is ready
# in a third of the time (Gradio is not imported).
HEADLESS = {"POOLSERVE_UI": "false"}


def test_settings(**overrides: Any) -> Settings:
    return Settings(**{"device": "cpu", **LIMITS, **overrides})


test_settings.__test__ = False  # type: ignore[attr-defined]  # not a test, despite the name


def headless_settings(**overrides: Any) -> Settings:
    """:func:`test_settings` without the page, for in-process apps whose tests do not involve it: building
    the page is most of the time ``create_app`` takes."""
    return test_settings(ui=False, **overrides)


def default_params(method: str) -> dict[str, Any]:
    """A valid parameter set for any method: a 2-window if it has kernel_size, else output_size=2 if
    required, else nothing (global presets)."""
    fields = poolcore.get_spec(method).params.model_fields
    if "kernel_size" in fields:
        return {"kernel_size": 2}
    if "output_size" in fields and fields["output_size"].is_required():
        return {"output_size": 2}
    return {}


def query_string(params: Mapping[str, Any]) -> dict[str, str]:
    """Parameters written the service's text way: ``2,3``, ``null,7``, ``true``."""

    def text(value: Any) -> str:
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (list, tuple)):
            return ",".join(text(v) for v in value) + ("," if len(value) == 1 else "")
        return str(value)

    return {key: text(value) for key, value in params.items()}


def reference(
    x: torch.Tensor, method: str, params: Mapping[str, Any], *, seed: int | None = None
) -> torch.Tensor:
    """poolcore called directly; a seed means train mode with a CPU generator seeded the same."""
    spec = poolcore.get_spec(method)
    if seed is None:
        return spec(x, params)
    return spec(x, params, training=True, generator=torch.Generator().manual_seed(seed))


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def png_bytes(pixels: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; IANA's dynamic range starts at 49152


def free_port() -> int:
    """A free loopback port for a server that binds the port itself (the gRPC service does; the HTTP one
    gets its socket from :func:`live_server_process`). Drawn below the kernel's ephemeral range, from which
    every outgoing connection takes its local port: a port picked with ``bind(0)`` and released was taken
    by a client socket before the server bound it, on a machine busy with other tests. Each pytest-xdist
    worker draws from its own slice, so two workers never pick the same port."""
    low = _ephemeral_low()
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    span = (low - 10000) // workers  # ports 10000 and up: clear of the well-known and common ones
    if span >= 100:
        start = 10000 + (worker % workers) * span
        for port in random.Random().sample(range(start, start + span), 100):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as sock:  # no room below the ephemeral range: the kernel's pick
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]


def wait_ready(
    base: str, proc: subprocess.Popen, timeout: float, name: str, why: Callable[[], str] = lambda: ""
) -> None:
    """Poll ``base``/ready until it answers 200; a ``RuntimeError`` naming ``name`` (and ``why()``, what
    the process left behind) if the process exits first or ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before it was ready{why()}")
        try:
            if httpx.get(f"{base}/ready", timeout=2.0, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not ready after {timeout} s")
        time.sleep(0.2)


@contextmanager
def live_server(
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
    *,
    limits: Mapping[str, int] | None = LIMITS,
    access_log: Path | None = None,
) -> Iterator[str]:
    """The base URL of :func:`live_server_process`'s server."""
    with live_server_process(env, timeout, limits=limits, access_log=access_log) as server:
        yield server.url


@contextmanager
def live_server_process(
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
    *,
    limits: Mapping[str, int] | None = LIMITS,
    access_log: Path | None = None,
) -> Iterator[LiveServer]:
    """The server in a subprocess on a free loopback port (a socket bound here and handed over with
    ``--fd``, so no other process can take the port in between); yields the base URL, stops it after.

    ``limits`` are the service's size limits (None: its defaults); with ``access_log``, uvicorn's
    access log (one line per request, with its status) goes to that file."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    # Each server its own page cache: servers in parallel test processes wrote the same example image to
    # the same content-hashed path of a shared one while another read it ("cannot identify image file").
    cache = tempfile.TemporaryDirectory(prefix="poolserve-gradio-")
    full_env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": cache.name,
        "POOLSERVE_DEVICE": "cpu",
        **{f"POOLSERVE_{k.upper()}": str(v) for k, v in (limits or {}).items()},
        **(env or {}),
    }
    # `poolserve` itself (python -m service): its protocol's connection limits and drain are under test.
    command = [sys.executable, "-m", "service", "--fd", str(sock.fileno())]
    command += ["--log-level", "info" if access_log else "warning"]
    log_file = access_log.open("wb") if access_log else None  # uvicorn's access log goes to stdout
    proc = subprocess.Popen(command, cwd=ROOT, env=full_env, pass_fds=(sock.fileno(),), stdout=log_file)
    sock.close()  # the child holds its own copy
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, timeout, "uvicorn")
        yield LiveServer(base, proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if log_file is not None:
            log_file.close()
        cache.cleanup()
