"""The UI's attack surface (issue 9): server files, the upload cache, unknown functions and API keys.

Each attack is replayed over HTTP against the app as ``create_app`` builds it, with Gradio's upload cache
(``GRADIO_TEMP_DIR``) in a directory of the test's own. The list of endpoints that take a file is derived
from the page's Blocks, so an endpoint added later is attacked too.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import gradio as gr
import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from starlette.routing import Mount
from starlette.types import Message

from service.app import create_app
from service.ui import PATH
from service.ui.imaging import ASSETS

from .support import test_settings

SECRET = b"poolserve-secret-7c1f0e: root:x:0:0:root:/root:/bin/bash\n"
KEYS = ("first-key-0123456789", "second-key-9876543210")


# ---- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Gradio's upload cache for this test only (Gradio reads the variable when an app is built)."""
    directory = tmp_path / "gradio-cache"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(directory))
    return directory


def _outside_dirs() -> list[Path]:
    """Directories that are neither the working directory, the temp directory nor Gradio's cache."""
    excluded = [
        Path.cwd(),
        Path(tempfile.gettempdir()),
        Path(os.environ.get("GRADIO_TEMP_DIR", "/nonexistent")),
    ]
    candidates = [Path("/var/tmp"), Path.home()]
    out = []
    for base in candidates:
        real = base.resolve()
        if (
            base.is_dir()
            and os.access(base, os.W_OK)
            and not any(_within(real, e.resolve()) for e in excluded)
        ):
            out.append(base)
    return out


def _within(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents or path in directory.parents


@pytest.fixture
def secrets_dir() -> Iterator[Path]:
    """A fresh directory outside the working and temp directories, holding a text secret and an image
    secret (a real PNG, so a leak through the pooled result would show too); removed afterwards."""
    bases = _outside_dirs()
    if not bases:
        pytest.skip("no writable directory outside the working and temp directories")
    directory = Path(tempfile.mkdtemp(prefix="poolserve-secret-", dir=bases[0]))
    try:
        (directory / "passwd").write_bytes(SECRET)
        pixels = np.random.default_rng(9).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        (directory / "secret.png").write_bytes(buf.getvalue())
        yield directory
    finally:
        for item in directory.iterdir():
            item.unlink()
        directory.rmdir()


def _files_under(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()] if directory.exists() else []


def _dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in _files_under(directory))


def _blocks(app: FastAPI) -> gr.Blocks:
    mount = next(r for r in app.router.routes if isinstance(r, Mount) and r.path == PATH)
    gradio_app: Any = getattr(mount.app, "gradio_app", mount.app)  # behind the guard, or (before it) bare
    blocks: gr.Blocks = gradio_app.get_blocks()
    return blocks


def _takes_files(component: Any) -> bool:
    """A component whose API value is (or holds) a Gradio file object."""
    try:
        info = component.api_info()
    except Exception:  # layout blocks and the like have no API value
        return False
    return "gradio.FileData" in json.dumps(info)


def _file_endpoints(app: FastAPI) -> list[tuple[int, str | None, list[int]]]:
    """Every function of the page with a file input: (fn_index, api_name, positions of its file inputs)."""
    out = []
    for index, fn in _blocks(app).fns.items():
        positions = [i for i, c in enumerate(fn.inputs) if _takes_files(c)]
        if positions:
            out.append((index, fn.api_name if isinstance(fn.api_name, str) else None, positions))
    return out


def _initial_data(client: TestClient, app: FastAPI, fn_index: int) -> list[Any]:
    """The values the browser would send for the function's inputs (the page's initial values)."""
    config = client.get("/ui/config").json()
    values = {c["id"]: c.get("props", {}).get("value") for c in config["components"]}
    return [values.get(c._id) for c in _blocks(app).fns[fn_index].inputs]


def _file(path: Path | str) -> dict[str, Any]:
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}}


def _read_stream(client: TestClient, url: str, params: dict[str, str] | None = None) -> str:
    """An SSE answer read until its event completes (or fails), or the stream ends."""
    text: list[str] = []
    last_event = False
    with client.stream("GET", url, params=params) as response:
        for line in response.iter_lines():
            text.append(line)
            if last_event and line.startswith("data:"):
                break
            if line in ("event: complete", "event: error"):
                last_event = True
            elif '"process_completed"' in line or '"close_stream"' in line:
                break
    return "\n".join(text)


# ---- finding 1: server files through /ui -------------------------------------------------------------------
def test_every_file_endpoint_refuses_server_files(cache_dir: Path, secrets_dir: Path) -> None:
    """Replays the reported attack (a file object naming a server file, then /file= on every path the
    answers name) on every function that takes a file, over every route that runs one."""
    app = create_app(test_settings())
    answers: list[str] = []
    statuses: list[tuple[str, int, str]] = []
    leaks: list[str] = []
    with TestClient(app, raise_server_exceptions=False) as client:
        endpoints = _file_endpoints(app)
        assert any(name == "pool_image" for _, name, _ in endpoints)  # the reported one is among them
        for secret in (secrets_dir / "passwd", secrets_dir / "secret.png"):
            for fn_index, name, positions in endpoints:
                data = _initial_data(client, app, fn_index)
                for position in positions:
                    data[position] = _file(secret)
                attempts: list[tuple[str, dict[str, Any]]] = [
                    (
                        "/ui/gradio_api/queue/join",
                        {"data": data, "fn_index": fn_index, "session_hash": "attack"},
                    )
                ]
                if name is not None:
                    attempts += [
                        (f"/ui/gradio_api/{route}/{name}", {"data": data}) for route in ("call", "run", "api")
                    ]
                    info = client.get("/ui/gradio_api/info").json()["named_endpoints"].get(f"/{name}")
                    if info is not None:
                        named = {
                            p["parameter_name"]: value
                            for p, value in zip(info["parameters"], data, strict=False)
                        }
                        attempts.append((f"/ui/gradio_api/call/v2/{name}", named))
                for url, body in attempts:
                    response = client.post(url, json=body)
                    answers.append(response.text)
                    statuses.append((url, response.status_code, response.text[:200]))
                    event_id = response.json().get("event_id") if response.status_code == 200 else None
                    if event_id and "/call/" in url:
                        answers.append(_read_stream(client, f"{url}/{event_id}"))
                    elif event_id:
                        answers.append(
                            _read_stream(client, "/ui/gradio_api/queue/data", {"session_hash": "attack"})
                        )
            named_paths = {str(secret)} | set(
                re.findall(r"(/[^\s'\"\\]*" + re.escape(secret.name) + ")", "\n".join(answers))
            )
            for path in named_paths:
                for url in (f"/ui/gradio_api/file={path}", f"/ui/gradio_api/file{path}"):
                    served = client.get(url)
                    if served.status_code not in (403, 404) or secret.read_bytes() in served.content:
                        leaks.append(f"{url} answered {served.status_code} with {served.content[:60]!r}")
    assert not leaks, leaks
    assert SECRET not in "\n".join(answers).encode()
    copies = [
        p
        for p in _files_under(cache_dir)
        if p.read_bytes() in (SECRET, (secrets_dir / "secret.png").read_bytes())
    ]
    assert not copies, f"copied into Gradio's cache: {copies}"
    # And each attempt is refused up front, with a message that says why.
    for url, status, text in statuses:
        assert status == 403 and "not a file uploaded to this server" in text, (url, status, text)


def test_file_route_serves_only_uploads_and_the_pages_files(cache_dir: Path, secrets_dir: Path) -> None:
    with TestClient(create_app(test_settings())) as client:
        for path in (secrets_dir / "passwd", Path("/etc/hostname"), Path("README.md"), Path(__file__)):
            response = client.get(f"/ui/gradio_api/file={path}")
            assert response.status_code == 403 and "file not allowed" in response.json()["detail"].lower(), (
                path
            )
        link = cache_dir / ("a" * 64)
        link.mkdir(parents=True, exist_ok=True)
        (link / "link.txt").symlink_to(secrets_dir / "passwd")  # a link in the cache still points outside
        response = client.get(f"/ui/gradio_api/file={link / 'link.txt'}")
        assert response.status_code == 403 and SECRET not in response.content
        for url in (
            "/ui/gradio_api/file=http://example.com/x.png",
            "/ui/gradio_api/proxy=http://example.com/x",
        ):
            assert client.get(url).status_code == 403, url
        example = client.get(f"/ui/gradio_api/file={ASSETS / 'checkerboard.png'}")
        assert example.status_code == 200 and example.content == (ASSETS / "checkerboard.png").read_bytes()


def test_a_real_upload_still_runs(cache_dir: Path) -> None:
    """The guard lets the browser's flow through: upload, call with the returned path, fetch the result."""
    body = (ASSETS / "cells.png").read_bytes()
    app = create_app(test_settings())
    with TestClient(app) as client:
        uploaded = client.post("/ui/gradio_api/upload", files={"files": ("cells.png", body, "image/png")})
        assert uploaded.status_code == 200, uploaded.text
        (path,) = uploaded.json()
        assert Path(path).read_bytes() == body and Path(path).is_relative_to(cache_dir)
        data = _initial_data(client, app, next(i for i, n, _ in _file_endpoints(app) if n == "pool_image"))
        data[0] = _file(path)
        event = client.post("/ui/gradio_api/call/pool_image", json={"data": data})
        assert event.status_code == 200, event.text
        text = _read_stream(client, f"/ui/gradio_api/call/pool_image/{event.json()['event_id']}")
        assert "event: complete" in text, text[:500]
        result = json.loads(text.split("data: ", 1)[1].splitlines()[0])[0]
        fetched = client.get(f"/ui/gradio_api/file={result['path']}")
        assert fetched.status_code == 200 and fetched.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_only_the_upload_route_takes_multipart(cache_dir: Path) -> None:
    with TestClient(create_app(test_settings())) as client:
        response = client.post(
            "/ui/gradio_api/call/pool_image", files={"files": ("x.png", b"123", "image/png")}
        )
    assert (
        response.status_code == 415 and "only through POST /ui/gradio_api/upload" in response.json()["detail"]
    )


def test_the_mounted_blocks_check_paths_themselves(cache_dir: Path, secrets_dir: Path) -> None:
    """Gradio's own check is switched on too (defence in depth): with the guard out of the way,
    ``_check_allowed`` refuses a path that was not uploaded."""
    from gradio import processing_utils
    from gradio.context import LocalContext
    from gradio.exceptions import InvalidPathError

    app = create_app(test_settings())
    blocks = _blocks(app)
    assert blocks.has_launched is True
    token = LocalContext.blocks.set(blocks)
    try:
        with pytest.raises(InvalidPathError):
            processing_utils._check_allowed(str(secrets_dir / "passwd"), True)
    finally:
        LocalContext.blocks.reset(token)


@pytest.mark.parametrize("layer", ["guard", "gradio's own check"])
def test_each_layer_alone_stops_the_attack(
    layer: str, cache_dir: Path, secrets_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: with the other layer switched off, either one still keeps the file out."""
    import service.ui
    from service.ui.guard import UIGuard

    if layer == "guard":
        monkeypatch.setattr(service.ui, "close_upstream_hole", lambda blocks: None)
    else:
        monkeypatch.setattr(UIGuard, "_check_files", lambda self, data: None)
    app = create_app(test_settings())
    with TestClient(app, raise_server_exceptions=False) as client:
        assert _blocks(app).has_launched is (layer != "guard")
        data = _initial_data(client, app, next(i for i, n, _ in _file_endpoints(app) if n == "pool_image"))
        data[0] = _file(secrets_dir / "passwd")
        response = client.post("/ui/gradio_api/call/pool_image", json={"data": data})
        if response.status_code == 200:  # Gradio's check answers in the event stream
            text = _read_stream(client, f"/ui/gradio_api/call/pool_image/{response.json()['event_id']}")
            assert "event: error" in text and SECRET not in text.encode()
        else:
            assert response.status_code == 403
    assert not [p for p in _files_under(cache_dir) if p.read_bytes() == SECRET]


def test_upstream_gradio_still_leaves_mounted_apps_unchecked(secrets_dir: Path) -> None:
    """Pins the Gradio bug that ``service.ui.guard.close_upstream_hole`` works around.

    If this fails, Gradio now sets ``has_launched`` for mounted apps (or checks paths regardless): drop
    ``close_upstream_hole`` and this test, and keep the guard. Checked with Gradio 6.31."""
    from gradio import processing_utils
    from gradio.context import LocalContext

    with gr.Blocks() as blocks:
        image = gr.Image(type="filepath")
        image.change(lambda x: x, image, image)
    gr.mount_gradio_app(FastAPI(), blocks, path="/x", ssr_mode=False, mcp_server=False)
    assert blocks.has_launched is False, f"Gradio {gr.__version__} marks mounted Blocks as launched"
    token = LocalContext.blocks.set(blocks)
    try:
        processing_utils._check_allowed(str(secrets_dir / "passwd"), True)  # no InvalidPathError: unchecked
    finally:
        LocalContext.blocks.reset(token)


# ---- finding 5: the upload cache ---------------------------------------------------------------------------
def _upload(client: TestClient, name: str, size: int, seed: int) -> Any:
    payload = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    return client.post("/ui/gradio_api/upload", files={"files": (name, payload, "application/octet-stream")})


def test_upload_cache_never_exceeds_its_limit(cache_dir: Path) -> None:
    limit = 500_000  # one client's share, an eighth, takes one 60 kB upload at a time
    app = create_app(test_settings(ui_cache_bytes=limit))
    with TestClient(app) as client:
        pinned = _dir_bytes(cache_dir)  # the page's examples, copied in when it was built
        assert 0 < pinned < limit
        paths = []
        for i in range(16):  # 16 × 60 kB, well over the limit in all
            response = _upload(client, f"blob{i}.bin", 60_000, seed=i)
            assert response.status_code == 200, response.text
            paths.append(response.json()[0])
            assert _dir_bytes(cache_dir) <= limit, f"after upload {i}: {_dir_bytes(cache_dir)} bytes"
            assert Path(paths[-1]).exists()  # the newest upload is kept ...
        assert not Path(paths[0]).exists()  # ... the oldest went first
        assert all(Path(p).exists() for p in _page_example_paths(client))  # the examples stay
        too_big = _upload(client, "huge.bin", limit + 1, seed=99)
        assert too_big.status_code == 413 and "over the UI cache limit" in too_big.json()["detail"]
        assert not any(p.name == "huge.bin" for p in _files_under(cache_dir))
        chunked = client.post(
            "/ui/gradio_api/upload",
            content=iter([b"--x\r\n"]),
            headers={"Content-Type": "multipart/form-data; boundary=x"},
        )
        assert chunked.status_code == 411
        assert _dir_bytes(cache_dir) <= limit


def _page_example_paths(client: TestClient) -> list[str]:
    config = client.get("/ui/config").json()
    text = json.dumps([c for c in config["components"] if c["type"] == "dataset"])
    return sorted(set(re.findall(r'"path": "([^"]+)"', text)))


def test_expired_files_are_removed(cache_dir: Path) -> None:
    """The sweep drops files older than the maximum age (checked at a later 'now'), never the page's own."""
    app = create_app(test_settings(ui_cache_max_age=60))
    with TestClient(app) as client:
        response = _upload(client, "old.bin", 1000, seed=1)
        path = Path(response.json()[0])
        cache = app.state.ui_cache
        assert cache.sweep() and path.exists()  # young: kept
        cache.sweep(now=time.time() + 61)
        assert not path.exists()
        assert all(Path(p).exists() for p in _page_example_paths(client))


def test_the_cleaner_runs_in_the_background(cache_dir: Path) -> None:
    app = create_app(test_settings(ui_cache_max_age=0.2))
    with TestClient(app) as client:
        path = Path(_upload(client, "brief.bin", 1000, seed=2).json()[0])
        deadline = time.monotonic() + 30  # generous: the cleaner runs every 0.1 s
        while path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not path.exists()


def test_cache_counts_only_gradios_layout(tmp_path: Path) -> None:
    """A GRADIO_TEMP_DIR pointed at a shared directory loses nothing but Gradio's own files."""
    from service.ui.cache import UICache

    (tmp_path / "mine.txt").write_bytes(b"x" * 5000)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_bytes(b"y" * 5000)
    ours = tmp_path / ("f" * 64)
    ours.mkdir()
    (ours / "upload.bin").write_bytes(b"z" * 5000)
    cache = UICache(tmp_path, max_bytes=100, max_age=1e9)
    assert cache.used() == 5000
    assert cache.sweep() == 0
    assert not (ours / "upload.bin").exists()
    assert (tmp_path / "mine.txt").exists() and (tmp_path / "notes" / "a.txt").exists()


def test_room_held_for_arriving_uploads_is_not_given_twice(tmp_path: Path) -> None:
    from service.ui.cache import CacheFull, UICache, UploadTooLarge

    cache = UICache(tmp_path, max_bytes=100, max_age=60)
    held = cache.reserve(60)  # an upload still arriving
    with pytest.raises(CacheFull, match="60 bytes of uploads arriving"):
        cache.reserve(60)
    cache.release(held)
    cache.reserve(60)
    with pytest.raises(UploadTooLarge, match="upload of 101 bytes is over the UI cache limit of 100"):
        cache.reserve(101)


# ---- finding 12: unknown functions -------------------------------------------------------------------------
def test_unknown_functions_get_4xx(cache_dir: Path) -> None:
    long_name = "x" * 5000
    with TestClient(create_app(test_settings()), raise_server_exceptions=False) as client:
        cases = [
            ("/ui/gradio_api/queue/join", {"data": [], "fn_index": 9999, "session_hash": "s"}, 404),
            ("/ui/gradio_api/queue/join", {"data": [], "fn_index": -1, "session_hash": "s"}, 404),
            ("/ui/gradio_api/queue/join", {"data": [], "fn_index": "abc", "session_hash": "s"}, 422),
            ("/ui/gradio_api/queue/join", {"data": [], "session_hash": "s"}, 422),
            ("/ui/gradio_api/call/nope", {"data": []}, 404),
            ("/ui/gradio_api/call/v2/nope", {}, 404),
            ("/ui/gradio_api/run/nope", {"data": []}, 404),
            ("/ui/gradio_api/api/nope", {"data": []}, 404),
            ("/ui/gradio_api/run/pool_image", {"data": [], "fn_index": 10**6}, 404),
            (f"/ui/gradio_api/call/{long_name}", {"data": []}, 404),
        ]
        for url, body, status in cases:
            response = client.post(url, json=body)
            assert response.status_code == status, (url[:80], response.status_code, response.text[:200])
            assert len(response.json()["detail"]) < 2000
        result = client.get("/ui/gradio_api/call/nope/0123456789abcdef")
        assert result.status_code == 404 and "no UI endpoint named 'nope'" in result.json()["detail"]


def test_malformed_ui_calls_get_4xx(cache_dir: Path) -> None:
    """Inputs Gradio cannot take (it answers each with a 500) get 422 and the reason, without internals."""
    with TestClient(create_app(test_settings()), raise_server_exceptions=False) as client:
        # As many values as /pool_image takes (one per control the registry gives the page), each wrong.
        n = len(client.get("/ui/gradio_api/info").json()["named_endpoints"]["/pool_image"]["parameters"])
        cases = [
            ("/ui/gradio_api/call/v2/pool_image", {"bogus": 1}, "`bogus` is not a valid"),
            ("/ui/gradio_api/run/pool_image", {"data": []}, "didn't receive enough input values"),
            ("/ui/gradio_api/api/pool_image", {"data": [None] + [1] * (n - 1)}, "not in the list of choices"),
            ("/ui/gradio_api/run/pool_image", {"data": [1] * n}, "validation error for ImageData"),
            (
                "/ui/gradio_api/component_server",
                {"session_hash": "s", "component_id": 99999, "fn_name": "x", "data": None},
                "KeyError: 99999",
            ),
        ]
        for url, body, reason in cases:
            response = client.post(url, json=body)
            assert response.status_code == 422, (url, response.status_code, response.text[:300])
            detail = response.json()["detail"]
            assert detail.startswith("the UI could not process this request: ") and reason in detail, detail
            assert "Traceback" not in detail and " at 0x" not in detail and len(detail) < 400


def test_a_failure_in_the_page_code_is_a_logged_500_not_a_422(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Gradio answers 500 both to inputs it cannot take and to a bug in the page's function; only the first
    is the client's mistake. A bug is a 500 that names the request id and nothing internal, and is logged."""
    from service.ui import image_tab

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internal state")

    monkeypatch.setattr(image_tab, "pool_image", broken)  # run_fn looks it up when it runs
    with TestClient(create_app(test_settings()), raise_server_exceptions=False) as client:
        parameters = client.get("/ui/gradio_api/info").json()["named_endpoints"]["/pool_image"]["parameters"]
        data = [p.get("parameter_default") for p in parameters]  # the page's own defaults, no image
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="poolserve"):
            response = client.post("/ui/gradio_api/run/pool_image", json={"data": data})
        request_id = response.headers["x-request-id"]
        assert response.status_code == 500, response.text[:300]
        assert response.json()["detail"] == f"internal server error (request id {request_id})"
        assert "secret" not in response.text
        assert any(request_id in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
        # The same call with inputs Gradio refuses never reaches the page's code: still the client's 422.
        refused = client.post("/ui/gradio_api/run/pool_image", json={"data": data[:1]})
        assert refused.status_code == 422 and "didn't receive enough input values" in refused.text


def test_every_page_function_is_marked() -> None:
    """The guard tells the client's mistakes from bugs by a mark on every page function; one registered
    unmarked (a coroutine, a generator, or added after the mount) would turn its bugs back into 422s."""
    from service.ui import guard

    app = create_app(test_settings())
    mount = next(r for r in app.router.routes if isinstance(r, Mount) and r.path == PATH)
    gradio_app: Any = getattr(mount.app, "gradio_app", mount.app)
    blocks = gradio_app.get_blocks()
    fns = [f.fn for f in blocks.fns.values() if f.fn is not None]
    assert len(fns) > 10
    for fn in fns:
        assert getattr(fn, "__wrapped__", None) is not None and fn.__code__ is not fn.__wrapped__.__code__
    with pytest.raises(TypeError, match="not a plain function"):
        with gr.Blocks() as extra:
            button = gr.Button()

            async def handler() -> None:
                return None

            button.click(handler)
        guard.mark_page_code(extra)


# ---- API keys ----------------------------------------------------------------------------------------------
def _concrete(path: str) -> str:
    """A route's path with each parameter filled in."""
    return re.sub(r"\{[^}]+\}", "x", path)


def _ui_routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every (method, path) the Gradio app under /ui routes, its included routers' routes too."""
    mount = next(r for r in app.router.routes if isinstance(r, Mount) and r.path == PATH)
    out: list[tuple[str, str]] = []

    def walk(routes: Any) -> None:
        for route in routes:
            inner = getattr(route, "original_router", None) or getattr(route, "router", None)
            if not hasattr(route, "path") and inner is not None:
                walk(inner.routes)
            elif hasattr(route, "path"):
                for method in sorted(getattr(route, "methods", None) or {"GET"}):
                    out.append((method, PATH + _concrete(route.path)))

    gradio_app: Any = getattr(mount.app, "gradio_app", mount.app)
    walk(gradio_app.routes)
    return out


PUBLIC = re.compile(
    r"^/ui(/|/login/?|/logout|/theme\.css|/gradio_api/theme\.css|/favicon\.ico|/robots\.txt"
    r"|/manifest\.json|/pwa_icon(/.*)?|/(assets|static|svelte)/.*)$"
)


def test_with_keys_every_ui_route_needs_a_login(cache_dir: Path) -> None:
    app = create_app(test_settings(api_keys=",".join(KEYS)))
    with TestClient(app, raise_server_exceptions=False) as client:
        routes = _ui_routes(app)
        assert ("POST", "/ui/gradio_api/upload") in routes and ("GET", "/ui/config") in routes
        guarded = [(m, p) for m, p in routes if not PUBLIC.match(p)]
        assert len(guarded) > 40
        for method, path in guarded:
            response = client.request(method, path, json={} if method == "POST" else None)
            assert response.status_code == 401, (method, path, response.status_code)
            assert response.headers["www-authenticate"] == "Bearer"
        wrong = {"Authorization": "Bearer not-a-key"}
        assert client.get("/ui/config", headers=wrong).status_code == 401
        upload = client.post("/ui/gradio_api/upload", files={"files": ("a.png", b"123", "image/png")})
        assert upload.status_code == 401 and not any(p.name == "a.png" for p in _files_under(cache_dir))
        page = client.get("/ui/")  # the login form: no components, no functions
        assert page.status_code == 200 and '"auth_required":true' in page.text.replace(" ", "")
        assert "pool_image" not in page.text  # nor the API description Gradio embeds in it
        assert client.post("/ui/login", data={"username": "me", "password": "nope"}).status_code == 400


@pytest.mark.parametrize("key", KEYS)
def test_with_keys_a_login_opens_every_route(
    cache_dir: Path, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = create_app(test_settings(api_keys=",".join(KEYS)))
    with TestClient(app) as client:
        login = client.post("/ui/login", data={"username": "anyone", "password": key})
        assert login.status_code == 200 and login.json() == {"success": True}
        config = client.get("/ui/config")
        assert config.status_code == 200 and config.json()["components"]
        assert client.get("/ui/gradio_api/info").status_code == 200
        uploaded = client.post(
            "/ui/gradio_api/upload",
            files={"files": ("cells.png", (ASSETS / "cells.png").read_bytes(), "image/png")},
        )
        assert uploaded.status_code == 200
        assert client.get(f"/ui/gradio_api/file={uploaded.json()[0]}").status_code == 200
        client.cookies.clear()
        assert client.get("/ui/config").status_code == 401
        client.headers["Authorization"] = f"Bearer {key}"  # the API's own scheme works on /ui too
        assert client.get("/ui/config").status_code == 200
        data = _initial_data(client, app, next(i for i, n, _ in _file_endpoints(app) if n == "pool_image"))
        data[0] = _file(uploaded.json()[0])
        event = client.post("/ui/gradio_api/call/pool_image", json={"data": data})
        assert event.status_code == 200, event.text
        text = _read_stream(client, f"/ui/gradio_api/call/pool_image/{event.json()['event_id']}")
        assert "event: complete" in text, text[:300]
    assert not any(k in caplog.text for k in KEYS)


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[str]:
    """A real server with keys, shared by the tests that log in to it (each gives one wrong key at most,
    far below the throttle's 20 a minute)."""
    from .support import live_server

    with live_server({"POOLSERVE_API_KEYS": ",".join(KEYS)}) as base:
        yield base


def test_gradio_client_logs_in_with_a_key(keyed_server: str) -> None:
    """gradio_client's ``auth=`` against a real server: the key is the password."""
    from gradio_client import Client, handle_file

    base = keyed_server
    client = Client(f"{base}/ui/", auth=("poolserve", KEYS[1]), verbose=False, download_files=False)
    image = handle_file(str(ASSETS / "checkerboard.png"))
    pooled, info, *_ = client.predict(image=image, api_name="/pool_image")
    assert pooled and "Error" not in info
    with pytest.raises(ValueError, match=r"(?i)credentials|login|auth"):
        Client(f"{base}/ui/", auth=("poolserve", "wrong"), verbose=False)


@pytest.mark.browser
@pytest.mark.slow
def test_a_browser_gets_the_login_form_and_the_key_opens_the_page(keyed_server: str) -> None:
    """Chromium against a real server with keys: Gradio's login form first, the key as the password."""
    from .test_ui_browser import CHROMIUM, CHROMIUM_ARGS, _need_browser

    sync_playwright = _need_browser()
    errors: list[str] = []
    refused: list[str] = []

    def seen(response: Any) -> None:
        if response.status >= 500:
            errors.append(f"{response.status} {response.url}")
        elif response.status == 401:
            refused.append(response.url)

    base = keyed_server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.on("response", seen)
            page.goto(f"{base}/ui/")
            password = page.locator("input[type=password]")
            password.wait_for()
            assert page.locator("#image-method").count() == 0  # nothing of the page before the login
            page.locator("input[type=text]").first.fill("anyone")
            password.fill("not-the-key")
            page.get_by_role("button", name=re.compile("login", re.I)).click()
            page.get_by_text(re.compile("incorrect credentials", re.I)).wait_for()
            page.locator("input[type=text]").first.fill("anyone")  # the form clears both fields
            password.fill(KEYS[0])
            page.get_by_role("button", name=re.compile("login", re.I)).click()
            page.locator("#image-method").wait_for()
        finally:
            browser.close()
    assert not errors, errors
    assert all("/ui/" in url for url in refused), refused


# ---- issue 17, finding 7: announcements must not empty the upload cache ------------------------------------
def test_announced_uploads_evict_nothing_and_received_bytes_evict_only_their_size(tmp_path: Path) -> None:
    from service.ui.cache import CacheFull, ClientShareFull, UICache, UploadTooLarge

    stored = []
    for i in range(4):  # 4 × 200 bytes of earlier uploads, oldest first
        directory = tmp_path / (f"{i}" * 64)
        directory.mkdir()
        stored.append(directory / "file.bin")
        stored[-1].write_bytes(bytes(200))
    cache = UICache(tmp_path, max_bytes=1000, max_age=1e9)
    assert cache.client_share == 125
    # 10 clients announce 100 bytes each: the whole limit is promised, and nothing is evicted for it.
    held = [cache.reserve(100, client=f"10.0.0.{i}") for i in range(10)]
    assert all(p.exists() for p in stored)
    with pytest.raises(CacheFull):
        cache.reserve(1, client="10.0.0.99")  # no more room to promise
    with pytest.raises(ClientShareFull):
        cache.reserve(25 + 1, client="10.0.0.0")  # its share is 125, it holds 100
    with pytest.raises(UploadTooLarge, match="share"):
        cache.reserve(126, client="10.0.0.42")
    assert all(p.exists() for p in stored)
    for upload in held[:2]:  # 200 bytes arrive: 800 stored + 200 received fit the limit
        assert cache.arrived(upload, 100)
        cache.make_room()
    assert all(p.exists() for p in stored)
    assert cache.arrived(held[2], 10**6)  # counted up to what it announced, 100: now 1100 > 1000
    cache.make_room()
    assert [p.exists() for p in stored] == [False, True, True, True]  # the oldest, and only it
    for upload in held:
        cache.release(upload)
    assert cache.reserve(100, client="10.0.0.0")  # its share is free again


ANNOUNCED = 90_000  # each held announcement: under one client's share (limit / 8) and the limit / 9


def _asgi_upload(
    app: FastAPI,
    client: tuple[str, int],
    body: bytes,
    content_type: str,
    *,
    hold: Callable[[], Awaitable[Any]] | None = None,
    replies: list[bytes] | None = None,
) -> Callable[[], Awaitable[int]]:
    """An upload driven through the ASGI app directly, from ``client``, so that its body can be held back:
    with ``hold``, it announces ANNOUNCED bytes and sends none until ``hold`` returns, then goes away.
    The coroutine function answers the status (0: no answer); answer bodies go to ``replies``."""

    async def run() -> int:
        status = 0
        first = True

        async def receive() -> Message:
            nonlocal first
            if first and hold is None:
                first = False
                return {"type": "http.request", "body": body, "more_body": False}
            if hold is not None:
                await hold()
            else:
                await anyio.sleep_forever()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and replies is not None:
                replies.append(message.get("body", b""))

        length = ANNOUNCED if hold is not None else len(body)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/ui/gradio_api/upload",
            "raw_path": b"/ui/gradio_api/upload",
            "root_path": "",
            "query_string": b"",
            "headers": [
                (b"host", b"testserver"),
                (b"content-type", content_type.encode()),
                (b"content-length", str(length).encode()),
            ],
            "client": client,
            "server": ("testserver", 80),
        }
        await app(scope, receive, send)
        return status

    return run


def test_announcements_alone_cannot_empty_the_upload_cache(cache_dir: Path) -> None:
    """The measured attack: sockets announce uploads and send nothing. Before: files were evicted for the
    announced bytes, then every upload got 503, whose message gave the exact free room."""
    limit = 800_000
    app = create_app(test_settings(ui_cache_bytes=limit))
    with TestClient(app) as client:
        victims: list[Path] = []
        while _dir_bytes(cache_dir) + 2 * 60_000 <= limit:  # other users' uploads fill the cache
            response = _upload(client, f"victim{len(victims)}.bin", 60_000, seed=len(victims))
            assert response.status_code == 200, response.text
            victims.append(Path(response.json()[0]))
        assert len(victims) >= 5
        replies: list[bytes] = []

        async def attack() -> tuple[list[int], bool]:
            gate = anyio.Event()
            statuses: list[int] = []
            holding = 0

            async def hold() -> None:
                nonlocal holding
                holding += 1
                await gate.wait()

            async def one(address: str, port: int) -> None:
                kind = "multipart/form-data; boundary=x"
                run = _asgi_upload(app, (address, port), b"", kind, hold=hold, replies=replies)
                statuses.append(await run())

            async with anyio.create_task_group() as group:
                for i in range(17):  # 17 sockets from one address ...
                    group.start_soon(one, "203.0.113.9", 40000 + i)
                for i in range(17):  # ... and one socket from each of 17 addresses
                    group.start_soon(one, f"198.51.100.{i}", 40000)
                with anyio.fail_after(60):  # generous; the refused ones answer at once
                    while len(statuses) + holding < 34:
                        await anyio.sleep(0.02)
                intact = all(p.exists() for p in victims)  # while the announcements hold their room
                gate.set()
            return statuses, intact

        statuses, intact = client.portal.call(attack)  # type: ignore[union-attr]
        assert intact, "announcements evicted files"
        assert statuses.count(429) == 16  # the first announcement took that address's share
        assert 503 in statuses  # the 17 addresses together hold all the room there is
        texts = [r.decode() for r in replies if r]
        assert texts and not any(re.search(r"[0-9]", t) for t in texts), texts  # no sizes revealed
        assert all(p.exists() for p in victims)
        # Once they have gone, uploads work again.
        request = httpx.Request(
            "POST", "http://testserver/ui/gradio_api/upload", files={"files": ("a", b"1")}
        )
        run = _asgi_upload(app, ("192.0.2.1", 1), request.read(), request.headers["content-type"])
        assert client.portal.call(run) == 200  # type: ignore[union-attr]
        assert _dir_bytes(cache_dir) <= limit


# ---- issue 17, finding 9: guessing keys at the page's login ------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _guard(app: FastAPI) -> Any:
    return next(r for r in app.router.routes if isinstance(r, Mount) and r.path == PATH).app


def _throttled(app: FastAPI) -> float:
    return app.state.metrics.registry.get_sample_value("poolserve_auth_throttled_total") or 0.0


def test_the_login_locks_an_address_out_after_20_wrong_keys(
    cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(test_settings(api_keys=",".join(KEYS)))
    clock = _Clock()
    app.state.auth_throttle.clock = clock
    caplog.set_level(logging.WARNING, logger="poolserve")
    with TestClient(app) as client:
        for _ in range(10):  # a missing password is not a guess
            assert client.post("/ui/login", data={"username": "me", "password": ""}).status_code in (400, 422)
        for i in range(19):
            assert (
                client.post("/ui/login", data={"username": "me", "password": f"guess-{i}"}).status_code == 400
            )
        assert client.post("/ui/login", data={"username": "me", "password": KEYS[0]}).status_code == 200
        assert client.post("/ui/login", data={"username": "me", "password": "guess-20"}).status_code == 400
        assert _throttled(app) == 0
        client.cookies.clear()
        refused = client.post("/ui/login", data={"username": "me", "password": KEYS[0]})  # the 21st
        assert refused.status_code == 429 and refused.headers["retry-after"] == "60"
        assert "too many wrong API keys" in refused.json()["detail"]
        assert "set-cookie" not in refused.headers
        bearer = {"Authorization": f"Bearer {KEYS[1]}"}
        assert client.get("/ui/config", headers=bearer).status_code == 429  # a right Bearer key too
        assert client.get("/methods", headers=bearer).status_code == 429  # and the HTTP routes
        assert client.get("/health").status_code == 200  # probes are exempt
        assert client.get("/ui/").status_code == 200  # the login form itself is public
        assert _throttled(app) == 3
        clock.now += 60
        assert client.post("/ui/login", data={"username": "me", "password": KEYS[0]}).status_code == 200
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert text.count("UI login") == 20 and "wrong API key refused" in text
    assert refused.headers["x-request-id"] in text
    assert not any(k in text for k in KEYS) and "guess-1" not in text


def test_wrong_keys_count_across_the_page_and_http(cache_dir: Path) -> None:
    app = create_app(test_settings(api_keys=",".join(KEYS)))
    app.state.auth_throttle.clock = _Clock()
    with TestClient(app) as client:
        wrong = {"Authorization": "Bearer wrong-key-0123456789"}
        for i in range(20):  # 20 wrong keys, taking turns at the three ways in
            if i % 3 == 0:
                assert (
                    client.post("/ui/login", data={"username": "me", "password": "nope"}).status_code == 400
                )
            elif i % 3 == 1:
                assert client.get("/ui/config", headers=wrong).status_code == 401
            else:
                assert client.get("/methods", headers=wrong).status_code == 401
        login = client.post("/ui/login", data={"username": "me", "password": KEYS[0]})
        assert login.status_code == 429  # the 21st request


# ---- issue 17, finding 10: cross-site writes, sessions that end --------------------------------------------
def test_a_cross_site_write_to_the_page_is_refused(cache_dir: Path) -> None:
    settings = test_settings(api_keys=",".join(KEYS), cors_origins="https://app.example")
    with TestClient(create_app(settings)) as client:
        assert client.post("/ui/login", data={"username": "me", "password": KEYS[0]}).status_code == 200
        png = (ASSETS / "cells.png").read_bytes()
        for origin in [
            "https://evil.example",
            "http://testserver.evil.example",
            "null",
            "https://testserver",
        ]:
            upload = client.post(
                "/ui/gradio_api/upload",
                files={"files": ("x.png", png, "image/png")},
                headers={"Origin": origin},
            )
            assert upload.status_code == 403, origin
            assert "cross-site write refused" in upload.json()["detail"]
            login = client.post(
                "/ui/login", data={"username": "me", "password": KEYS[0]}, headers={"Origin": origin}
            )
            assert login.status_code == 403
        assert not any(p.name == "x.png" for p in _files_under(cache_dir))
        for headers in [{"Origin": "http://testserver"}, {"Origin": "https://app.example"}, {}]:
            upload = client.post(
                "/ui/gradio_api/upload", files={"files": ("y.png", png, "image/png")}, headers=headers
            )
            assert upload.status_code == 200, headers
        assert (
            client.get("/ui/config", headers={"Origin": "https://evil.example"}).status_code == 200
        )  # reads


def test_the_page_behind_a_trusted_tls_proxy_takes_its_own_writes(cache_dir: Path) -> None:
    png = (ASSETS / "cells.png").read_bytes()
    for trusted, expected in [("testclient", 200), ("", 403)]:  # TestClient's peer plays the proxy
        with TestClient(create_app(test_settings(trusted_proxies=trusted))) as client:
            upload = client.post(
                "/ui/gradio_api/upload",
                files={"files": ("x.png", png, "image/png")},
                headers={"Origin": "https://testserver", "X-Forwarded-Proto": "https"},
            )
            assert upload.status_code == expected, trusted


def test_a_login_ends_after_the_session_time(cache_dir: Path) -> None:
    app = create_app(test_settings(api_keys=",".join(KEYS), ui_session_seconds=60))
    guard = _guard(app)
    clock = _Clock()
    guard.clock = clock
    with TestClient(app) as client:
        login = client.post("/ui/login", data={"username": "me", "password": KEYS[0]})
        assert login.status_code == 200
        cookies = login.headers.get_list("set-cookie")
        assert len(cookies) == 2
        for cookie in cookies:
            attributes = [a.strip().lower() for a in cookie.split(";")]
            assert "samesite=lax" in attributes and "max-age=60" in attributes, cookie
            assert "samesite=none" not in attributes
        clock.now += 59
        assert client.get("/ui/config").status_code == 200
        clock.now += 1
        assert client.get("/ui/config").status_code == 401  # the session is over: log in again
        assert '"auth_required":true' in client.get("/ui/").text.replace(" ", "")
        assert not guard._issued and guard._bearer_token not in guard.gradio_app.tokens
        assert list(guard.gradio_app.tokens) == []  # Gradio forgot the token too
        assert client.post("/ui/login", data={"username": "me", "password": KEYS[0]}).status_code == 200
        assert client.get("/ui/config").status_code == 200
        client.headers["Authorization"] = f"Bearer {KEYS[1]}"  # a Bearer key is checked every time
        client.cookies.clear()
        clock.now += 3600
        assert client.get("/ui/config").status_code == 200
