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

import httpx
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
# axe-core, the WCAG checker, installed by `make browser` (npm, into the git-ignored .browser-deps/).
AXE = ROOT / ".browser-deps" / "node_modules" / "axe-core" / "axe.min.js"
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
    if AXE.exists():  # an init script runs whatever the page's CSP says; it only defines window.axe
        context.add_init_script(path=str(AXE))
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
    pg.locator("#image-guide").get_by_text(poolcore.get_spec("max").description).wait_for()
    pg.locator("#image-param-kernel_size textarea, #image-param-kernel_size input").first.fill("4")
    pg.locator("#image-param-stride textarea, #image-param-stride input").first.fill("2")
    # The tab starts with a computed example: wait for this run's summary and a new, loaded output image.
    before = pg.evaluate("() => document.querySelector('#image-output img')?.src ?? null")
    pg.locator("#image-run").click()
    pg.locator("#image-info").get_by_text("3×47×47").wait_for()
    pg.wait_for_function(
        "(before) => { const img = document.querySelector('#image-output img');"
        " return !!img && img.src !== before && img.complete && img.naturalWidth > 0; }",
        arg=before,
    )
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
    # The snippet follows the settings through its own event, which on a loaded machine can land after
    # the pooled result (seen with one core busy): wait for it, then assert as before.
    snippet = pg.locator("#image-snippet")
    snippet.get_by_text("/pool/max?kernel_size=4&stride=2", exact=False).first.wait_for()
    assert "/pool/max?kernel_size=4&stride=2" in snippet.inner_text()
    _shot(pg, "ui-image-tab")


def test_image_tab_shows_the_service_error(page: tuple[Any, Network]) -> None:
    pg, _ = page
    # The tab opens on a 96×96 example, put in by a queued load event: wait until it has been pooled, or
    # on a loaded machine the event's answer can land after the upload and put the example back.
    _summary_shows(pg, "#image-info", "3×96×96")
    pg.locator("#image-input input[type=file]").set_input_files(str(ASSETS / "checkerboard.png"))
    # Then wait until the upload has landed (the page pools it by itself), or Pool may still send the
    # example.
    _summary_shows(pg, "#image-info", "1×64×64")
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
    n = len(poolcore.methods())
    # The tab's starting image comes from a queued load event: wait until it has been compared, or on a
    # loaded machine its answer can land after the upload and put the starting image back.
    pg.locator("#compare-info").get_by_text(f"{n} of {n} methods ran").wait_for()
    pg.locator("#compare-input input[type=file]").set_input_files(str(ASSETS / "checkerboard.png"))
    pg.locator("#compare-input img").wait_for()
    pg.locator("#compare-run").click()
    pg.locator("#compare-info").get_by_text(f"{n} of {n} methods ran").wait_for()
    pg.locator("#compare-tiles").get_by_text("1×16×16").first.wait_for()  # checkerboard (1 channel) pooled
    captions = pg.locator("#compare-tiles figcaption").all_inner_texts()
    assert [c.splitlines()[0] for c in captions] == poolcore.methods()
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


# ---- accessibility ----------------------------------------------------------------------------------------
# Violations that sit in Gradio's own markup and cannot be fixed from our side (theme, CSS, component
# arguments): (rule, CSS selector the violation's node matches, why). Nothing else is tolerated. Empty now:
# the theme's colours, the examples' labels and the images' alt texts removed every one axe found.
GRADIO_OWN: list[tuple[str, str, str]] = []


def _settled(pg: Any) -> None:
    """Wait until no output is pending (Gradio dims pending outputs and overlays a progress text)."""
    pg.wait_for_function(
        """() => !document.querySelector('.pending, .eta-bar, .meta-text-center, .progress-text')"""
    )
    pg.wait_for_timeout(300)  # the fade back to full opacity


def _axe(pg: Any) -> list[dict[str, Any]]:
    """axe-core's WCAG 2 A and AA violations on the page as it is, one entry per node."""
    _settled(pg)
    if not AXE.exists():
        message = f"{AXE} is missing (`make browser` installs axe-core with npm)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    violations = pg.evaluate(
        """async () => (await axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa']}}))
              .violations.flatMap(v => v.nodes.map(n => ({
                  rule: v.id, impact: v.impact, target: n.target.join(' '), why: n.failureSummary})))"""
    )
    known = []
    for violation in violations:
        for rule, selector, _reason in GRADIO_OWN:
            if (
                violation["rule"] == rule
                and pg.locator(selector).count()
                and pg.evaluate(
                    "([t, s]) => document.querySelector(t)?.matches(s)", [violation["target"], selector]
                )
            ):
                known.append(violation)
    return [v for v in violations if v not in known]


def test_every_tab_passes_axe(page: tuple[Any, Network]) -> None:
    """WCAG 2 A and AA (axe-core) on each tab, as it first shows and after a run."""
    pg, _ = page
    report: dict[str, list[dict[str, Any]]] = {}
    pg.locator("#image-output img").wait_for()
    report["image"] = _axe(pg)
    pg.get_by_role("tab", name="Compare").click()
    pg.locator("#compare-tiles figure").first.wait_for()
    report["compare"] = _axe(pg)
    pg.get_by_role("tab", name="Tensor").click()
    pg.locator("#tensor-walk-body").wait_for()
    report["tensor"] = _axe(pg)
    pg.get_by_role("tab", name="Image").click()
    pg.locator("#image-param-kernel_size textarea, #image-param-kernel_size input").first.fill("3")
    pg.locator("#image-run").click()
    pg.locator("#image-info").get_by_text("3×32×32").wait_for()  # 96 // 3: this run's summary
    report["image after a run"] = _axe(pg)
    found = {
        tab: [(v["rule"], v["target"], v["why"]) for v in items] for tab, items in report.items() if items
    }
    assert not found, found


# ---- what the page teaches --------------------------------------------------------------------------------
def test_method_guide_follows_the_picker(page: tuple[Any, Network]) -> None:
    pg, _ = page
    guide = pg.locator("#image-guide")
    guide.locator(".katex").first.wait_for()  # the formula is typeset, not shown as $$…$$
    _pick(pg, "image-method", "gem")
    guide.get_by_text("Radenović").wait_for()
    assert "$$" not in guide.inner_text() and guide.locator(".katex").count() >= 1
    assert "When to pick it." in guide.inner_text() and "Train and eval." in guide.inner_text()
    _shot(pg, "ui-method-guide")


def test_compare_views(page: tuple[Any, Network]) -> None:
    """Every tile says what it shows: lp's scale, the global numbers, the crop, the difference's gain."""
    pg, _ = page
    pg.get_by_role("tab", name="Compare").click()
    tiles = pg.locator("#compare-tiles")
    tiles.locator("figure").first.wait_for()
    # The tab opens on the cells in the zoomed crop; a new view or input shows without pressing the button.
    tiles.get_by_text("centre 8×8 of 24×24").first.wait_for()
    pg.locator("#compare-input input[type=file]").set_input_files(str(ASSETS / "gradient.png"))
    tiles.get_by_text("R 0.500 G 0.500 B 0.500").wait_for()  # gradient.png's means
    pg.locator("#compare-view").get_by_label("pooled").check()
    pg.wait_for_function("() => !document.querySelector('#compare-tiles').innerText.includes('centre 8')")
    n = len(poolcore.methods())
    assert tiles.locator("figure").count() == n
    text = tiles.inner_text()
    assert "÷ n^(1/p) = ÷ 4" in text and "R 0.500 G 0.500 B 0.500" in text
    # Captions sit below their images, inside the tile, never over them.
    overlaps = pg.evaluate(
        """() => [...document.querySelectorAll('#compare-tiles figure')].filter(f => {
              const i = f.querySelector('img').getBoundingClientRect();
              const c = f.querySelector('figcaption').getBoundingClientRect();
              return c.top < i.bottom - 0.5;
           }).length"""
    )
    assert overlaps == 0
    _shot(pg, "ui-compare-pooled")
    for view, marker, name in (
        ("zoomed crop", "centre 8×8 of 16×16", "ui-compare-crop"),
        ("difference from avg", "max − avg", "ui-compare-difference"),
    ):
        pg.locator("#compare-view").get_by_label(view).check()  # no button press: the view shows
        tiles.get_by_text(marker).first.wait_for()
        _shot(pg, name)
    # Snippets stay inside their box.
    wide = pg.evaluate(
        """() => [...document.querySelectorAll('#compare-snippet pre')]
              .filter(p => p.scrollWidth > p.clientWidth + 1).length"""
    )
    assert wide == 0


@pytest.mark.skipif(not HAS_STOCHASTIC, reason="stochastic is not registered on this branch yet")
def test_tensor_walkthrough(page: tuple[Any, Network]) -> None:
    """Filled on first load; a clicked output cell's window is highlighted and its numbers written out."""
    pg, _ = page
    pg.get_by_role("tab", name="Tensor").click()
    walk = pg.locator("#tensor-walk")
    walk.get_by_text("Σa² / Σa = 16.52 / 10 = 1.652").wait_for()  # before any click
    assert pg.locator("#tensor-walk td.in-window").count() == 9
    _shot(pg, "ui-tensor-first-load")
    # max over 2×2 windows with stride 1: a 2×2 result; click its cell [1,1].
    _pick(pg, "tensor-method", "max")
    pg.locator("#tensor-param-kernel_size textarea, #tensor-param-kernel_size input").first.fill("2")
    pg.locator("#tensor-param-stride textarea, #tensor-param-stride input").first.fill("1")
    pg.locator("#tensor-run").click()
    pg.locator('#tensor-output [data-testid="cell-1-1"]').get_by_text("2").wait_for()
    pg.locator('#tensor-output [data-testid="cell-1-1"]').click()
    walk.get_by_text("Output [1,1] of max").wait_for()
    assert "rows 1–2, cols 1–2" in walk.inner_text() and "y = max(a) = 2" in walk.inner_text()
    assert pg.locator("#tensor-walk td.in-window").count() == 4
    _shot(pg, "ui-tensor-walkthrough")
    # Stochastic in train mode: the probabilities and the drawn position.
    _pick(pg, "tensor-method", "stochastic")
    pg.locator("#tensor-param-kernel_size textarea, #tensor-param-kernel_size input").first.fill("3")
    pg.locator("#tensor-param-stride textarea, #tensor-param-stride input").first.fill("")
    pg.locator("#tensor-mode").get_by_label("train").check()
    pg.locator("#tensor-run").click()
    walk.get_by_text("drawn: a[").wait_for()
    assert "p = a / Σa = a / 10" in walk.inner_text()
    assert pg.locator("#tensor-walk td.drawn").count() >= 1
    _shot(pg, "ui-tensor-train-draw")


# ---- no stale or misleading state; both widths ----------------------------------------------------------
def _summary_shows(pg: Any, selector: str, *texts: str) -> str:
    """The summary once it holds all of ``texts`` and is settled (no progress timer, not out of date)."""
    pg.wait_for_function(
        "([s, texts]) => { const e = document.querySelector(s); if (!e) return false;"
        " const t = e.innerText; return texts.every(x => t.includes(x)) && !t.includes('Out of date')"
        " && !/^\\s*[0-9.]+s\\b/.test(t); }",
        arg=[selector, list(texts)],
    )
    return str(pg.locator(selector).inner_text())


def test_image_tab_never_shows_a_stale_result(page: tuple[Any, Network]) -> None:
    """A new image or method pools again by itself; any other change marks the result out of date until
    Pool is pressed; a method that trains shows the mode it will run in."""
    pg, _ = page
    info = "#image-info"
    _summary_shows(pg, info, "3×96×96", "3×24×24")  # the first example, pooled on load
    pg.locator("#image-input input[type=file]").set_input_files(str(ASSETS / "checkerboard.png"))
    _summary_shows(pg, info, "1×64×64", "1×16×16")  # checkerboard: one channel, 64 // 4
    _pick(pg, "image-method", "max")
    text = _summary_shows(pg, info, "1×16×16", "max ·")
    assert "avg ·" not in text
    box = pg.locator("#image-param-kernel_size textarea, #image-param-kernel_size input").first
    box.click()
    box.press("Control+A")
    pg.keyboard.type("8")  # typed, as a person does (a programmatic fill fires no input event)
    pg.locator(info).get_by_text("Out of date").wait_for()
    pg.locator("#image-run").click()
    _summary_shows(pg, info, "1×8×8")
    _pick(pg, "image-method", "stochastic")
    mode = pg.locator("#image-mode")
    mode.wait_for()
    assert mode.get_by_label("eval").is_checked()  # a choice made, never neither
    _shot(pg, "ui-image-stale")
    # A global method: no window controls, and no blank band where they were; its numbers are shown.
    _pick(pg, "image-method", "global_avg")
    _summary_shows(pg, info, "1×1×1", "One value per channel: ")
    gap = pg.evaluate(
        "() => document.querySelector('#image-guide-box').getBoundingClientRect().top"
        " - document.querySelector('#image-method').closest('.form').getBoundingClientRect().bottom"
    )
    assert gap < 40, gap
    _shot(pg, "ui-image-global")


@pytest.mark.parametrize(("width", "height"), [(1280, 900), (390, 844)])
def test_each_tab_at_desktop_and_phone_width(browser: Any, server: Server, width: int, height: int) -> None:
    """Each tab at a desktop and a phone width, screenshots saved: the Image tab's Pool button and first
    image sit in the first screen, formulas and snippets stay inside their boxes."""
    context = browser.new_context(viewport={"width": width, "height": height})
    try:
        pg = context.new_page()
        pg.set_default_timeout(60_000)
        pg.goto(f"{server.base}/ui/")
        pg.locator("#image-output img").wait_for()
        _settled(pg)
        image_top = pg.evaluate(
            "() => document.querySelector('#image-input img').getBoundingClientRect().top"
        )
        assert image_top < height, image_top
        if width >= 1280:
            bottom = pg.evaluate("() => document.querySelector('#image-run').getBoundingClientRect().bottom")
            assert bottom <= height, bottom
        # A display formula wider than its column scrolls inside it; nothing widens the page.
        overflow = pg.evaluate(
            "() => [...document.querySelectorAll('#image-guide .katex-display')]"
            ".map(e => getComputedStyle(e).overflowX)"
        )
        assert overflow and all(o == "auto" for o in overflow), overflow
        assert pg.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1")
        pg.screenshot(path=str(_artifact(f"ui-image-{width}")))
        for tab, ready in (("Compare", "#compare-tiles figure"), ("Tensor", "#tensor-walk-body")):
            pg.get_by_role("tab", name=tab).click()
            pg.locator(ready).first.wait_for()
            _settled(pg)
            assert pg.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1"), tab
            pg.screenshot(path=str(_artifact(f"ui-{tab.lower()}-{width}")), full_page=True)
    finally:
        context.close()


def _artifact(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / f"{name}.png"


def _start_image_load(base: str, input_id: str) -> int:
    """The fn_index of the load event that fetches the starting image of the component ``input_id``, from
    the page's own config: the load answers into a hidden image, whose change copies it into the input."""
    config = httpx.get(f"{base}/ui/config", timeout=30).json()
    ids = {c["props"].get("elem_id"): c["id"] for c in config["components"] if c.get("props")}
    deps = config["dependencies"]
    holders = [
        t[0] for d in deps if d["outputs"] == [ids[input_id]] for t in d["targets"] if t[1] == "change"
    ]
    # (Or straight into the input, as before the fix: the test then shows the race.)
    targets = [[h] for h in holders] + [[ids[input_id]]]
    loads = [d["id"] for d in deps if d["outputs"] in targets and any(t[1] == "load" for t in d["targets"])]
    assert len(loads) == 1, loads
    return int(loads[0])


@pytest.mark.parametrize("tab", ["image", "compare"])
def test_an_early_upload_is_not_replaced_by_the_starting_image(
    browser: Any, server: Server, tab: str
) -> None:
    """The Image and Compare tabs get their starting image from a queued load event. An upload made before
    that event's answer lands must stay: the tab shows and pools the upload, and the late answer is
    dropped. (Before, the answer put the 96×96 example back over the upload and pooled that.) The test
    holds the load event's queue request in the browser until the upload has been pooled, then lets it
    go, and checks for three seconds that the upload stays."""
    load = _start_image_load(server.base, f"{tab}-input")
    held: list[Any] = []
    answered: list[Any] = []

    def hold(route: Any) -> None:
        body = route.request.post_data_json or {}
        if body.get("fn_index") == load and not held:
            held.append(route)
            return
        route.continue_()

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.route("**/gradio_api/queue/join*", hold)
    context.on(
        "response",
        lambda r: (
            answered.append(r) if "queue/join" in r.url and r.request in [h.request for h in held] else None
        ),
    )
    log_offset = server.access_log.stat().st_size
    try:
        pg = context.new_page()
        pg.set_default_timeout(30_000)
        pg.goto(f"{server.base}/ui/")
        if tab == "compare":
            pg.get_by_role("tab", name="Compare").click()
        pg.locator(f"#{tab}-input input[type=file]").wait_for(state="attached")
        for _ in range(300):  # the page sends its load events as it mounts
            if held:
                break
            pg.wait_for_timeout(100)
        assert held, "the starting image's load event never reached the queue"
        pg.locator(f"#{tab}-input input[type=file]").set_input_files(str(ASSETS / "checkerboard.png"))
        # The upload pooled: the image tab's summary, the compare tab's tiles (64 // 4, one channel).
        summary, pooled = ("#image-info", "1×64×64") if tab == "image" else ("#compare-tiles", "1×16×16")
        pg.locator(summary).get_by_text(pooled).first.wait_for()
        held[0].continue_()
        for _ in range(300):
            if answered:
                break
            pg.wait_for_timeout(100)
        assert answered, "the held load event never got its answer"
        for _ in range(30):  # the load's own answer (an instant function) comes within milliseconds
            pg.wait_for_timeout(100)
            natural = pg.evaluate(
                "(s) => document.querySelector(s)?.naturalWidth ?? null", f"#{tab}-input img"
            )
            assert natural == 64, f"the {tab} tab's input became {natural} px wide: the starting image"
            assert pooled in pg.locator(summary).inner_text()
        failed = server.failed_since(log_offset)
        assert not failed, f"the server answered with an error: {failed}"
    finally:
        context.close()
