"""The page in a real browser: Debian's Chromium driven by Playwright against uvicorn on a loopback port.

Every request the page makes is recorded, and any that would leave 127.0.0.1 is blocked and fails the test.
Screenshots go to ``test-artifacts/``. With ``CI=true`` a missing Chromium fails instead of skipping.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import torch

import poolcore
from service.codecs import Limits
from service.codecs import image as image_codec
from service.config import Settings
from service.pooling import run_pool
from service.ui.imaging import ASSETS

from .support import live_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
HAS_STOCHASTIC = "stochastic" in poolcore.methods()


def _need_browser() -> Any:
    """Playwright's sync API, or a skip (a failure in CI) saying what is missing."""
    problem = None
    if not CHROMIUM.exists():
        problem = f"{CHROMIUM} is missing (`make browser` installs Debian's chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "playwright is not installed"
    if problem:
        if IN_CI:
            pytest.fail(f"browser tests must run in CI: {problem}")
        pytest.skip(problem)
    return sync_playwright


@dataclass(frozen=True)
class Server:
    base: str
    access_log: Path  # uvicorn's access log: one line per request with its status

    def failed_since(self, offset: int) -> list[str]:
        """The access-log lines from byte ``offset`` on whose status is 4xx or 5xx."""
        with self.access_log.open("rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
        return [line for line in lines if (m := _ACCESS.search(line)) and int(m.group(1)) >= 400]


_ACCESS = re.compile(r'"[A-Z]+ \S+ HTTP/[\d.]+" (\d{3})')


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """uvicorn with the real app in a subprocess on a free loopback port; stopped at the end."""
    _need_browser()
    access_log = tmp_path_factory.mktemp("uvicorn") / "access.log"
    # The service's own defaults (device and limits), as a user's server would have.
    with live_server({"POOLSERVE_DEVICE": "auto"}, limits=None, access_log=access_log) as base:
        yield Server(base, access_log)


class Network:
    """Every URL the page asked for, and the ones that would have left the machine."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.outside: list[str] = []
        self.failed: list[str] = []  # every 4xx/5xx answer the page got

    def response(self, response: Any) -> None:
        if response.status >= 400:
            self.failed.append(f"{response.status} {response.url}")

    def console(self, message: Any) -> None:
        # Chromium's own favicon fetch reaches neither the router nor the response events; its failure
        # shows only here (and in the server's access log).
        if message.type == "error" and "Failed to load resource" in message.text:
            self.failed.append(f"console: {message.text}")

    def route(self, route: Any) -> None:
        url = route.request.url
        self.requests.append(url)
        parsed = urlparse(url)
        if parsed.scheme in ("data", "blob") or parsed.hostname == "127.0.0.1":
            route.continue_()
        else:
            self.outside.append(url)
            route.abort()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright = _need_browser()
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[tuple[Any, Network]]:
    """A fresh page on /ui (reached through the / redirect), with every request and every 4xx/5xx answer
    recorded."""
    network = Network()
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.route("**/*", network.route)
    # Requests the router does not see (service workers, pings) still show up here.
    context.on(
        "request",
        lambda request: None if request.url in network.requests else network.requests.append(request.url),
    )
    context.on("response", network.response)
    page = context.new_page()
    page.on("console", network.console)
    page.set_default_timeout(30_000)
    log_offset = server.access_log.stat().st_size
    page.goto(f"{server.base}/")
    page.wait_for_url(f"{server.base}/ui/")
    page.locator("#image-method").wait_for()
    try:
        yield page, network
        outside = [
            u
            for u in network.requests
            if urlparse(u).scheme not in ("data", "blob") and urlparse(u).hostname != "127.0.0.1"
        ]
        assert not network.outside and not outside, f"requests left 127.0.0.1: {network.outside + outside}"
        assert network.requests, "no requests were recorded"
        # Page assets, the favicon and Gradio's API calls all answer; errors show in the page, not as 4xx.
        assert not network.failed, f"requests answered with an error: {network.failed}"
        failed = server.failed_since(log_offset)
        assert not failed, f"the server answered with an error: {failed}"
    finally:
        context.close()


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _pick(page: Any, dropdown_id: str, option: str) -> None:
    page.locator(f"#{dropdown_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def _img_sizes(page: Any, selector: str) -> list[dict[str, int]]:
    return page.evaluate(
        """s => [...document.querySelectorAll(s)].map(i => {
              const box = i.getBoundingClientRect();
              const shown = [Math.round(box.width), Math.round(box.height)];
              return {natural: [i.naturalWidth, i.naturalHeight], shown};
           })""",
        selector,
    )


def test_favicon_is_served(browser: Any, server: Server) -> None:
    """Chromium asks the origin for /favicon.ico on its own; it must get an image, not a 404.

    Its own context without request interception: Playwright cannot route favicon requests (routed, they
    fail in the browser and never reach the server) and reports no request events for them, so the
    redirect chain is checked instead; any other request must stay on 127.0.0.1 too, and the server's
    access log must show no error.
    """
    context = browser.new_context()
    requests: list[str] = []
    context.on("request", lambda request: requests.append(request.url))
    log_offset = server.access_log.stat().st_size
    try:
        pg = context.new_page()
        response = pg.goto(f"{server.base}/favicon.ico")
        assert response is not None and response.status == 200
        assert response.headers["content-type"].startswith("image/")
        assert len(response.body()) > 0
        chain, request = [], response.request
        while request is not None:
            chain.append(request.url)
            request = request.redirected_from
    finally:
        context.close()
    assert len(chain) == 2, chain  # /favicon.ico, then Gradio's icon under /ui
    urls = chain + requests
    assert all(urlparse(u).hostname == "127.0.0.1" for u in urls), urls
    failed = server.failed_since(log_offset)
    assert not failed, f"the server answered with an error: {failed}"


def test_image_tab_pools_an_uploaded_image(page: tuple[Any, Network]) -> None:
    pg, _ = page
    assert pg.title() == "poolserve"
    pg.locator("#image-input input[type=file]").set_input_files(str(ASSETS / "cells.png"))  # 96×96
    pg.locator("#image-input img").wait_for()
    _pick(pg, "image-method", "max")
    pg.locator("#image-description").get_by_text(poolcore.get_spec("max").description).wait_for()
    pg.locator("#image-param-kernel_size textarea, #image-param-kernel_size input").first.fill("4")
    pg.locator("#image-param-stride textarea, #image-param-stride input").first.fill("2")
    pg.locator("#image-run").click()
    pg.locator("#image-output img").wait_for()
    pg.wait_for_function("() => document.querySelector('#image-output img')?.naturalWidth > 0")
    (out,) = _img_sizes(pg, "#image-output img")
    (inp,) = _img_sizes(pg, "#image-input img")
    # (96 - 4) // 2 + 1 = 47 pooled pixels, shown at the input's display size.
    assert out["natural"] == [47, 47]
    assert inp["natural"] == [96, 96]
    assert out["shown"] == inp["shown"]
    rendering = pg.evaluate(
        "() => getComputedStyle(document.querySelector('#image-output img')).imageRendering"
    )
    assert rendering == "pixelated"
    info = pg.locator("#image-info").inner_text()
    assert "3×96×96" in info and "3×47×47" in info and "device" in info and " ms" in info
    assert "/pool/max?kernel_size=4&stride=2" in pg.locator("#image-snippet").inner_text()
    _shot(pg, "ui-image-tab")


def test_image_tab_shows_the_service_error(page: tuple[Any, Network]) -> None:
    pg, _ = page
    pg.locator("#image-input input[type=file]").set_input_files(str(ASSETS / "checkerboard.png"))
    pg.locator("#image-input img").wait_for()
    pg.locator("#image-param-kernel_size textarea, #image-param-kernel_size input").first.fill("100")
    pg.locator("#image-run").click()
    settings = Settings()
    x = image_codec.decode(
        (ASSETS / "checkerboard.png").read_bytes(), Limits(settings.max_elements, settings.max_image_pixels)
    )
    with pytest.raises(ValueError) as error:
        run_pool(x, "avg", {"kernel_size": 100, "dims": 2})
    info = pg.locator("#image-info")
    info.get_by_text("Error 422").wait_for()
    assert str(error.value) in info.inner_text()
    assert "Traceback" not in pg.content()
    _shot(pg, "ui-image-error")


def test_compare_tab_shows_every_method(page: tuple[Any, Network]) -> None:
    pg, _ = page
    pg.get_by_role("tab", name="Compare").click()
    pg.locator("#compare-input input[type=file]").set_input_files(str(ASSETS / "checkerboard.png"))
    pg.locator("#compare-input img").wait_for()
    pg.locator("#compare-run").click()
    n = len(poolcore.methods())
    pg.locator("#compare-info").get_by_text(f"{n} of {n} methods ran").wait_for()
    text = pg.locator("#compare-gallery").inner_text()
    for method in poolcore.methods():
        assert f"{method} ·" in text
    _shot(pg, "ui-compare-tab")


@pytest.mark.skipif(not HAS_STOCHASTIC, reason="stochastic is not registered on this branch yet")
def test_tensor_tab_gives_the_seed_eval_value(page: tuple[Any, Network]) -> None:
    pg, _ = page
    pg.get_by_role("tab", name="Tensor").click()
    assert pg.locator("#tensor-method input").input_value() == "stochastic"
    pg.locator("#tensor-run").click()
    cell = pg.locator('#tensor-output [data-testid="cell-0-0"]')
    cell.get_by_text("1.652").wait_for()
    assert cell.inner_text().strip() == "1.652"
    # Σa²/Σa of the seed's window, computed here, not read from our code.
    values = [[0.0, 1.1, 2.5], [0.9, 2.0, 1.0], [0.0, 1.5, 1.0]]
    expected = sum(v * v for r in values for v in r) / sum(v for r in values for v in r)
    assert f"{expected:.3f}" == "1.652"
    assert "1×3×3" in pg.locator("#tensor-info").inner_text()
    pg.locator("#tensor-prob-maps").wait_for()
    assert "0.250" in pg.locator("#tensor-prob-maps").inner_text()  # 2.5 / 10
    pg.locator("#tensor-plot canvas, #tensor-plot svg").first.wait_for()
    _shot(pg, "ui-tensor-tab")


@pytest.mark.skipif(not HAS_STOCHASTIC, reason="stochastic is not registered on this branch yet")
def test_tensor_tab_negative_matrix_shows_the_service_error(page: tuple[Any, Network]) -> None:
    pg, _ = page
    pg.get_by_role("tab", name="Tensor").click()
    cell = pg.locator('#tensor-input [data-testid="cell-1-0"]')
    cell.dblclick()
    pg.keyboard.press("Control+A")
    pg.keyboard.type("-1")
    pg.keyboard.press("Enter")
    pg.locator('#tensor-input [data-testid="cell-1-0"]').get_by_text("-1").wait_for()
    pg.locator("#tensor-run").click()
    x = torch.tensor([[[0.0, 1.1, 2.5], [-1.0, 2.0, 1.0], [0.0, 1.5, 1.0]]])
    with pytest.raises(ValueError) as error:
        run_pool(x, "stochastic", {"kernel_size": 3, "dims": 2})
    info = pg.locator("#tensor-info")
    info.get_by_text("Error 422").wait_for()
    assert str(error.value) in info.inner_text()
    _shot(pg, "ui-tensor-error")
