"""Load shedding over HTTP (issue 9, finding 11 and "Access control and overload"): a bounded queue, a
queue timeout and shutdown answer 503 with Retry-After; requests whose client has gone are never run.

In process, one worker thread is held on an Event so nothing depends on timing; the disconnect test needs
a real server (Starlette's test client can't disconnect) and one genuinely slow request.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.app import create_app
from service.ui.handlers import PageError, Runtime, pool_tensor
from service.workers import RunTimeout

from .support import HEADLESS, live_server, npy_bytes, test_settings

SMALL = {"data": [[1.0, 2.0], [3.0, 4.0]], "params": {"kernel_size": 2, "dims": 1}}


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of /metrics' text, 0 where the series does not exist yet."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    found = re.search(r"^" + pattern + "$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@contextmanager
def held(app: FastAPI, count: int = 1) -> Iterator[None]:
    """``count`` UI-style blocking calls on the app's workers, each holding a worker thread or a queue slot
    until the block ends."""
    release = threading.Event()
    started = threading.Event()

    def hold() -> None:
        started.set()
        release.wait(30)

    def call() -> None:
        with contextlib.suppress(RunTimeout):  # held past request_timeout: its caller is answered 503
            app.state.workers.call(hold)

    callers = [threading.Thread(target=call) for _ in range(count)]
    try:
        callers[0].start()
        assert started.wait(10)  # running: the rest wait in the queue
        for caller in callers[1:]:
            caller.start()
        deadline = time.monotonic() + 10
        while app.state.workers.pending() < count - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert app.state.workers.pending() == count - 1
        yield
    finally:
        release.set()
        for caller in callers:
            caller.join(30)


def test_beyond_max_queue_requests_get_503_with_retry_after() -> None:
    app = create_app(test_settings(max_concurrency=1, max_queue=1))
    with TestClient(app) as client:
        with held(app, count=2):  # one running, one waiting: the queue is full
            assert metric(client.get("/metrics").text, "poolserve_queue_depth") == 1
            response = client.post("/pool/max", json=SMALL)
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "1"
            assert "POOLSERVE_MAX_QUEUE=1" in response.json()["detail"]
        assert client.post("/pool/max", json=SMALL).status_code == 200
        text = client.get("/metrics").text
        assert metric(text, "poolserve_shed_requests_total", reason="queue_full") == 1
        assert metric(text, "poolserve_queue_depth") == 0


def test_a_request_still_queued_after_request_timeout_gets_503_and_never_runs() -> None:
    # The held job runs past request_timeout too: with no replacement thread allowed (max_stuck_workers=0)
    # the pool stays full, so the queued request still meets the queue's timeout.
    app = create_app(test_settings(max_concurrency=1, request_timeout=0.2, max_stuck_workers=0))
    with TestClient(app) as client:
        with held(app):
            response = client.post("/pool/avg", json=SMALL)
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "1"
            assert "POOLSERVE_REQUEST_TIMEOUT" in response.json()["detail"]
        assert client.post("/pool/max", json=SMALL).status_code == 200
        text = client.get("/metrics").text
        assert metric(text, "poolserve_pool_seconds_count", method="avg") == 0  # dropped, not run late
        assert metric(text, "poolserve_pool_seconds_count", method="max") == 1
        assert metric(text, "poolserve_shed_requests_total", reason="queue_timeout") == 1


def test_a_request_during_shutdown_gets_503() -> None:
    app = create_app(test_settings())
    with TestClient(app) as client:
        app.state.workers.close()  # what the lifespan does when the server stops
        response = client.post("/pool/max", json=SMALL)
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "1"
        assert "shutting down" in response.json()["detail"]


def test_the_ui_meets_the_same_queue_bound() -> None:
    app = create_app(test_settings(max_concurrency=1, max_queue=0))
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    with TestClient(app):
        runtime = Runtime.of_state(app.state)
        with held(app), pytest.raises(PageError) as caught:
            pool_tensor(runtime, x, "max", {"kernel_size": 2, "dims": 2})
        assert caught.value.status == 503 and "POOLSERVE_MAX_QUEUE=0" in caught.value.message
        assert pool_tensor(runtime, x, "max", {"kernel_size": 2, "dims": 2}).output.tolist() == [[[4.0]]]


def _abandon(url: str, path: str, body: bytes, leave: threading.Event) -> None:
    """Send a whole request on a raw socket, then, once ``leave`` is set, close the connection without
    reading the answer."""
    host, port = url.removeprefix("http://").split(":")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head + body)
        leave.wait(60)


def _wait_for_queue_depth(client: httpx.Client, depth: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while (now := metric(client.get("/metrics").text, "poolserve_queue_depth")) != depth:
        assert time.monotonic() < deadline, f"queue depth {now}, not {depth}, after {seconds:.0f} s"
        time.sleep(0.05)


# A small max pooling request, as /pool and as the inference protocol's infer: both drop it alike.
_QUITTERS = {
    "/pool/max": SMALL,
    "/v2/models/max/infer": {
        "inputs": [{"name": "input", "shape": [1, 1, 2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}],
        "parameters": {"kernel_size": 2},
    },
}


@pytest.mark.parametrize("path", list(_QUITTERS))
def test_requests_whose_clients_gave_up_are_dropped_not_run(path: str) -> None:
    """One worker, busy with a slow request; four clients queue small requests behind it and hang up once
    all four are queued. None of the four may run: no operator time is recorded for their method, and the
    queue is empty again once they have gone. Each step waits for what /metrics shows, not for a fixed
    time, so a loaded machine only makes it slower. /pool and /v2 alike."""
    # Average pooling with a 47×47 window at stride 1 over 16 planes of 512²: about 4 s on one thread.
    slow = npy_bytes(np.random.default_rng(0).random((16, 512, 512), dtype=np.float32))
    limits = {"max_body_bytes": 17 << 20, "max_elements": 1 << 22, "max_image_pixels": 1 << 16}
    limits["max_work"] = 1 << 34
    env = {"POOLSERVE_MAX_CONCURRENCY": "1", "POOLSERVE_TORCH_THREADS": "1", **HEADLESS}
    with live_server(env=env, limits=limits) as url, httpx.Client(base_url=url, trust_env=False) as client:
        answer: dict[str, Any] = {}

        def run_slow() -> None:
            answer["slow"] = client.post(
                "/pool/avg?kernel_size=47&stride=1&dims=2",
                content=slow,
                headers={"content-type": "application/x-npy"},
                timeout=120,
            )

        slow_thread = threading.Thread(target=run_slow)
        sent = time.monotonic()
        slow_thread.start()
        time.sleep(1.0)  # its 16 MiB reach the server and a worker starts on it (about 4 s of pooling)
        body = httpx.Request("POST", "/", json=_QUITTERS[path]).content
        leave = threading.Event()
        quitters = [threading.Thread(target=_abandon, args=(url, path, body, leave)) for _ in range(4)]
        for quitter in quitters:
            quitter.start()
        _wait_for_queue_depth(client, 4)  # all four wait behind the slow job
        leave.set()
        for quitter in quitters:
            quitter.join(30)
        _wait_for_queue_depth(client, 0)  # the server noticed the closed connections
        text = client.get("/metrics").text
        # The slow job is still running: the four really were queued behind it when they left.
        left = time.monotonic() - sent
        running = metric(text, "poolserve_pool_seconds_count", method="avg") == 0
        assert running, f"the slow job ended within {left:.2f} s, before the four left: make it slower"
        assert metric(text, "poolserve_queue_depth") == 0
        slow_thread.join(120)
        assert answer["slow"].status_code == 200
        pooling = float(answer["slow"].headers["x-pool-elapsed-ms"]) / 1e3
        print(f"slow request: {pooling:.2f} s pooling; the four left {left:.2f} s after it was sent")
        assert client.post("/pool/avg", json=SMALL).status_code == 200
        text = client.get("/metrics").text
        assert metric(text, "poolserve_pool_seconds_count", method="avg") == 2  # the slow one, then SMALL
        assert metric(text, "poolserve_pool_seconds_count", method="max") == 0  # none of the four ran
        assert metric(text, "poolserve_shed_requests_total", reason="client_gone") == 4
