"""Contracts with the internals of pinned dependencies: each test names what poolserve relies on, so that an
upgrade that changes it fails here, loudly, rather than in a security test or in production.

pyproject.toml pins uvicorn and Gradio to the minor versions these pass on. Raising a pin: run this file
(and the rest) on the new release, adapt what fails, then ``make lock``. Gradio's ``has_launched`` hole is
pinned by ``tests/service/test_ui_security.py::test_upstream_gradio_still_leaves_mounted_apps_unchecked``.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from importlib.metadata import version
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
import uvicorn
from fastapi import FastAPI
from gradio.state_holder import SessionState
from starlette.routing import Mount
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from service.server import DrainingServer, GuardedHttpToolsProtocol

ROOT = Path(__file__).parent.parent.parent


# ---- uvicorn: service/server.py subclasses HttpToolsProtocol and uvicorn.Server ----------------------------
# The callbacks GuardedHttpToolsProtocol overrides and calls super() in, with the arguments it passes.
_PROTOCOL_CALLBACKS = {
    "connection_made": ["transport"],
    "connection_lost": ["exc"],
    "data_received": ["data"],
    "send_400_response": ["msg"],
    "on_response_complete": [],
    "on_message_begin": [],
    "on_url": ["url"],
    "on_header": ["name", "value"],
    "on_headers_complete": [],
    "on_message_complete": [],
    "shutdown": [],  # uvicorn.Server.shutdown calls it on every connection (an event stream closes there)
}


@pytest.mark.parametrize("name", sorted(_PROTOCOL_CALLBACKS))
def test_httptools_protocol_has_the_callbacks_we_override(name: str) -> None:
    method = getattr(HttpToolsProtocol, name)
    params = list(inspect.signature(method).parameters)[1:]
    assert params == _PROTOCOL_CALLBACKS[name], f"uvicorn {uvicorn.__version__}: {name}{params}"
    assert name in vars(GuardedHttpToolsProtocol)  # still one we override


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _answer(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def test_httptools_protocol_attributes_and_cycle() -> None:
    """The attributes server.py reads or replaces, on a real protocol parsing a real request: the loop,
    transport, client, server_state.default_headers and cycle; the cycle's transport (looked up at each
    write, so replacing it redirects the response), send, more_body, response_started/complete,
    disconnected and message_event."""
    loop = asyncio.new_event_loop()
    try:
        config = uvicorn.Config(_answer, http="httptools", lifespan="off", log_level="warning")
        config.load()
        protocol = HttpToolsProtocol(config, ServerState(), app_state={}, _loop=loop)
        transport = _Transport()
        protocol.connection_made(transport)
        assert protocol.loop is loop and protocol.transport is transport
        assert protocol.client == ("127.0.0.1", 50000)
        assert isinstance(protocol.server_state.default_headers, list)
        assert protocol.cycle is None
        protocol.data_received(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\n")
        cycle = protocol.cycle
        assert isinstance(cycle, RequestResponseCycle)
        assert cycle.transport is transport and cycle.more_body is True
        assert (cycle.response_started, cycle.response_complete, cycle.disconnected) == (False, False, False)
        assert isinstance(cycle.message_event, asyncio.Event)
        assert list(inspect.signature(cycle.send).parameters) == ["message"]
        redirected = _Transport()
        cycle.transport = redirected  # what _close_early_answers does, before the app's task runs
        protocol.data_received(b"abc")
        assert cycle.more_body is False
        for _ in range(20):
            if cycle.response_complete:
                break
            loop.run_until_complete(asyncio.sleep(0))
        assert cycle.response_started and cycle.response_complete
        response = b"".join(redirected.written)
        assert response.startswith(b"HTTP/1.1 200") and response.endswith(b"ok")
        assert transport.written == []
    finally:
        loop.close()


def test_uvicorn_server_hooks() -> None:
    """DrainingServer overrides handle_exit, on_tick and shutdown, and reads should_exit, started and
    _captured_signals (cleared so a signalled shutdown exits 0)."""
    expected = {"handle_exit": ["sig", "frame"], "on_tick": ["counter"], "shutdown": ["sockets"]}
    for name, params in expected.items():
        assert list(inspect.signature(getattr(uvicorn.Server, name)).parameters)[1:] == params, name
        assert name in vars(DrainingServer)
    assert inspect.iscoroutinefunction(uvicorn.Server.on_tick)
    assert inspect.iscoroutinefunction(uvicorn.Server.shutdown)
    server = uvicorn.Server(uvicorn.Config(_answer))
    assert server.should_exit is False and server.started is False
    assert isinstance(server._captured_signals, list)


# ---- Gradio: service/ui mounts the page and guards it with Gradio's own state ---------------------------
def test_mount_gradio_app_takes_our_arguments() -> None:
    params = inspect.signature(gr.mount_gradio_app).parameters
    for name in (
        "footer_links",
        "run_history",
        "auth",
        "auth_message",
        "allowed_paths",
        "max_file_size",
        "ssr_mode",
        "mcp_server",
        "theme",
        "css",
    ):
        assert name in params, f"Gradio {gr.__version__}: mount_gradio_app has no {name}"


def test_gradio_app_and_blocks_internals_the_guard_reads() -> None:
    """UIGuard and the upload cache read the mounted app's uploaded_file_dir, cookie_id, tokens and
    state_holder (a session's blocks_config.fns), and the Blocks' fns (with api_name), config, blocks and
    temp_file_sets."""
    app = FastAPI()
    with gr.Blocks() as blocks:
        box = gr.Textbox()
        box.submit(lambda text: text, box, box, api_name="echo")
    gr.mount_gradio_app(app, blocks, path="/ui")
    gradio_app: Any = next(r for r in app.router.routes if isinstance(r, Mount) and r.path == "/ui").app
    assert isinstance(gradio_app.uploaded_file_dir, str)
    assert isinstance(gradio_app.cookie_id, str)
    assert isinstance(gradio_app.tokens, dict)
    holder = gradio_app.state_holder
    assert "no-such-session" not in holder
    assert isinstance(blocks.default_config.fns, dict)  # what a session's blocks_config starts as
    session = type(holder).__getitem__.__annotations__["return"]
    assert session in ("SessionState", SessionState)
    assert "blocks_config" in inspect.getsource(SessionState.__init__)
    assert [fn.api_name for fn in blocks.fns.values()] == ["echo"]
    assert isinstance(blocks.fns, dict) and all(isinstance(k, int) for k in blocks.fns)
    assert isinstance(blocks.config, dict) and isinstance(blocks.blocks, dict)
    assert all(isinstance(files, set) for files in blocks.temp_file_sets)


def test_gradio_login_cookies_and_file_marker() -> None:
    """The guard sets Gradio's login cookie (access-token-unsecure-<cookie_id>) for Bearer keys and finds
    files in a payload by Gradio's marker meta._type == "gradio.FileData"."""
    from gradio import routes
    from gradio.data_classes import FileData

    source = inspect.getsource(routes)
    assert 'f"access-token-{app.cookie_id}"' in source or "access-token-{" in source
    assert "access-token-unsecure-{" in source
    assert FileData(path="x").model_dump()["meta"] == {"_type": "gradio.FileData"}


# ---- the lock: what make installs is what pyproject asks for, hashed, torch left out --------------------
def _locked(path: Path) -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;\\]+)", path.read_text(), re.MULTILINE)
    return {name.lower().replace("_", "-"): pinned for name, pinned in pins}


@pytest.mark.parametrize("lock", ["service.txt", "test.txt"])
def test_the_lock_pins_everything_with_hashes_and_leaves_torch_out(lock: str) -> None:
    text = (ROOT / "requirements" / lock).read_text()
    pins = _locked(ROOT / "requirements" / lock)
    assert "torch" not in pins  # installed first, from the build that fits the machine
    for block in re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 1)[1]):
        if "==" in block and not block.startswith("#"):
            assert "--hash=sha256:" in block, block.splitlines()[0]
    for name in ("fastapi", "uvicorn", "gradio", "grpcio", "pillow"):
        assert name in pins


def test_the_service_lock_is_the_test_locks_subset() -> None:
    service = _locked(ROOT / "requirements" / "service.txt")
    test = _locked(ROOT / "requirements" / "test.txt")
    assert {name: test.get(name) for name in service} == service
    for name in ("pytest", "schemathesis", "onnxruntime"):
        assert name in test and name not in service


@pytest.mark.parametrize("name", ["uvicorn", "gradio"])
def test_the_internals_pinned_are_the_ones_installed(name: str) -> None:
    # The contracts above ran on this version: it must be the one a fresh install gets.
    assert version(name) == _locked(ROOT / "requirements" / "service.txt")[name]
