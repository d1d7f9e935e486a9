"""Issue 17, finding 3: a request costs what its pixels justify, and a request that runs too long is
answered without wedging the workers, on every protocol and the page.

A slow operation is injected (the operator waits on an Event), so nothing here depends on how fast the
machine is; the issue's own check, four scan bombs in flight and a small request beside them, is timed
with its figures, which are two orders of magnitude above what the refusal takes.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import service.pooling
from service.app import create_app
from service.ui.handlers import PageError, Runtime, pool_image, pool_tensor

from .image_bombs import jpeg_bytes, repeated_scan_jpeg
from .support import headless_settings, test_settings
from .test_shedding import metric

SMALL = {"data": [[[[1.0, 2.0], [3.0, 4.0]]]], "params": {"kernel_size": 2}}
V2_SMALL = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 2, 2], "data": [1, 2, 3, 4]}],
    "parameters": {"kernel_size": 2},
}


@pytest.fixture()
def stuck_max(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """``max`` pooling hangs (as a thread stuck in C code would) until the yielded Event is set; every
    other method runs as usual."""
    release = threading.Event()
    execute = service.pooling._execute

    def slow(checked: Any) -> torch.Tensor:
        if checked.spec.name == "max":
            release.wait(60)
        return execute(checked)

    monkeypatch.setattr(service.pooling, "_execute", slow)
    yield release
    release.set()


def test_a_request_running_past_request_timeout_gets_503_on_every_protocol_and_the_page(
    stuck_max: threading.Event,
) -> None:
    app = create_app(headless_settings(max_concurrency=1, request_timeout=0.5, max_stuck_workers=3))
    with TestClient(app) as client:
        response = client.post("/pool/max", json=SMALL)
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "1"
        assert "ran 0.5 s in a worker" in response.json()["detail"]
        assert "POOLSERVE_REQUEST_TIMEOUT" in response.json()["detail"]
        # One worker, stuck: a replacement answers the next request.
        small = client.post("/pool/avg", json=SMALL)
        assert small.status_code == 200 and small.json()["data"] == [[[[2.5]]]]
        v2 = client.post("/v2/models/max/infer", json=V2_SMALL)
        assert v2.status_code == 503 and "ran 0.5 s in a worker" in v2.json()["error"]
        runtime = Runtime.of_state(app.state)
        with pytest.raises(PageError) as caught:
            pool_tensor(runtime, torch.ones(1, 2, 2), "max", {"kernel_size": 2, "dims": 2})
        assert caught.value.status == 503 and "ran 0.5 s in a worker" in caught.value.message
        assert app.state.workers.stuck() == 3  # each replaced in turn: a fourth thread serves
        text = client.get("/metrics").text
        assert metric(text, "poolserve_shed_requests_total", reason="run_timeout") == 1
        stuck_max.set()
        deadline = time.monotonic() + 30
        while app.state.workers.stuck() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert app.state.workers.stuck() == 0
        again = client.post("/pool/max", json=SMALL)
        assert again.status_code == 200 and again.json()["data"] == [[[[4.0]]]]


def test_four_scan_bombs_in_flight_leave_room_for_a_small_request() -> None:
    """The issue's test: each bomb (a 4096² progressive JPEG holding one scan 10,000 times, which took a
    minute to decode) gets 422 naming its scans within 2 s; meanwhile a 1×1×4×4 /pool/avg answers 200
    within 5 s."""
    big = io.BytesIO()
    Image.new("L", (4096, 4096), 128).save(big, format="JPEG", progressive=True)
    bomb = repeated_scan_jpeg(big.getvalue(), 10_000)
    settings = test_settings(
        max_body_bytes=64 << 20, max_elements=1 << 24, max_image_pixels=4096 * 4096, max_concurrency=4
    )
    app = create_app(settings)
    with TestClient(app) as client, ThreadPoolExecutor(5) as pool:

        def send_bomb() -> tuple[int, str, float]:
            start = time.monotonic()
            response = client.post(
                "/pool/avg?kernel_size=2", content=bomb, headers={"content-type": "image/jpeg"}
            )
            return response.status_code, response.json()["detail"], time.monotonic() - start

        def send_small() -> tuple[int, Any, float]:
            start = time.monotonic()
            body = {
                "data": [[[[float(i + 4 * j) for i in range(4)] for j in range(4)]]],
                "params": {"kernel_size": 2},
            }
            response = client.post("/pool/avg", json=body)
            return response.status_code, response.json(), time.monotonic() - start

        bombs = [pool.submit(send_bomb) for _ in range(4)]
        small = pool.submit(send_small).result(30)
        assert small[0] == 200 and small[1]["data"] == [[[[2.5, 4.5], [10.5, 12.5]]]]
        assert small[2] < 5.0
        for future in bombs:
            status, detail, elapsed = future.result(30)
            assert status == 422 and "more than 64 scans" in detail
            assert elapsed < 2.0


def test_the_pages_uploads_meet_the_scan_limit() -> None:
    """The page decodes uploads with the same codec and the app's limits (POOLSERVE_MAX_JPEG_SCANS)."""
    bomb = repeated_scan_jpeg(jpeg_bytes((16, 16), progressive=True), 5)  # 10 + 5 scans
    app = create_app(headless_settings(max_jpeg_scans=14))
    with TestClient(app):
        runtime = Runtime.of_state(app.state)
        with pytest.raises(PageError) as caught:
            pool_image(runtime, bomb, "avg", {"kernel_size": 2})
        assert caught.value.status == 422 and "more than 14 scans" in caught.value.message
        fits = repeated_scan_jpeg(jpeg_bytes((16, 16), progressive=True), 4)
        assert pool_image(runtime, fits, "avg", {"kernel_size": 2}).input_shape == (3, 16, 16)
