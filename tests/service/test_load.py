"""Load: 64 concurrent clients for 30 s over a mix of methods and codecs, against the real server on
loopback, with /health probed throughout. Zero errors; /health p99 under 100 ms (scaled up on a machine
whose idle /health is already slow, see ``_health_bound_ms``); RSS after the load within 10% of RSS after
a warm-up with the same mix; seeded train-mode requests give identical bytes under concurrency. The
figures are printed (``pytest -s``)."""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import multiprocessing.queues
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from .support import live_server_process, npy_bytes

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc"),
]

CLIENTS = 64
LOAD_SECONDS = 30.0
WARM_UP_SECONDS = 8.0
HEALTH_P99_MS = 100.0  # the bound on an idle machine
IDLE_PROBES = 50
RNG = np.random.default_rng(2026)


def _png(size: int) -> bytes:
    pixels = RNG.integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: bytes
    content_type: str
    accept: str | None = None
    expected: bytes | None = None  # the solo answer, where it must be reproduced byte for byte


def _cases() -> list[Case]:
    small = RNG.uniform(0, 1, (1, 1, 8, 8)).astype(np.float32)
    medium = RNG.uniform(0, 1, (1, 16, 32, 32)).astype(np.float32)
    json_small = b'{"data": %s, "params": {"kernel_size": 2}}' % str(small.tolist()).encode()
    seeded = b'{"data": %s, "params": {"kernel_size": 2, "mode": "train", "seed": 7}}' % (
        str(small.tolist()).encode()
    )
    return [
        Case("json avg 8x8", "/pool/avg", json_small, "application/json"),
        Case("json stochastic train seed=7", "/pool/stochastic", seeded, "application/json"),
        Case("npy max 16x32x32", "/pool/max?kernel_size=2", npy_bytes(medium), "application/x-npy"),
        Case("npy gem 16x32x32", "/pool/gem?kernel_size=3&stride=2", npy_bytes(medium), "application/x-npy"),
        Case(
            "npy mixed train seed=3",
            "/pool/mixed?kernel_size=2&mode=train&seed=3",
            npy_bytes(medium),
            "application/x-npy",
        ),
        Case("png adaptive_avg 64x64", "/pool/adaptive_avg?output_size=16", _png(64), "image/png"),
        Case("png -> json lp", "/pool/lp?kernel_size=2", _png(32), "image/png", "application/json"),
    ]


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    mismatches: int = 0


async def _client_loop(
    client: httpx.AsyncClient, cases: list[Case], index: int, stop: float, tally: Tally
) -> None:
    turn = index
    while time.monotonic() < stop:
        case = cases[turn % len(cases)]
        turn += 1
        headers = {"content-type": case.content_type}
        if case.accept:
            headers["accept"] = case.accept
        start = time.perf_counter()
        try:
            response = await client.post(case.path, content=case.body, headers=headers)
        except httpx.HTTPError as error:
            tally.errors.append(f"{case.name}: {type(error).__name__} {error}")
            continue
        tally.latencies.setdefault(case.name, []).append(time.perf_counter() - start)
        if response.status_code != 200:
            tally.errors.append(f"{case.name}: {response.status_code} {response.text[:200]}")
        elif case.expected is not None and response.content != case.expected:
            tally.mismatches += 1


def _probe_health(url: str, seconds: float, out: multiprocessing.queues.Queue) -> None:
    """In its own process, so the load generator's busy event loop does not add to what it measures."""
    latencies = []
    with httpx.Client(base_url=url, timeout=10, trust_env=False) as client:
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            start = time.perf_counter()
            status = client.get("/health").status_code
            latencies.append(time.perf_counter() - start if status == 200 else float("inf"))
            time.sleep(0.02)
    out.put(latencies)


async def _run(url: str, cases: list[Case], seconds: float) -> Tally:
    tally = Tally()
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60, trust_env=False) as client:
        stop = time.monotonic() + seconds
        await asyncio.gather(*(_client_loop(client, cases, i, stop, tally) for i in range(CLIENTS)))
    return tally


def _run_with_probe(url: str, cases: list[Case], seconds: float) -> tuple[Tally, list[float]]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    prober = context.Process(target=_probe_health, args=(url, seconds, queue))
    prober.start()
    tally = asyncio.run(_run(url, cases, seconds))
    health = queue.get(timeout=60)
    prober.join(timeout=30)
    return tally, health


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _ms(values: list[float], q: float) -> float:
    return float(np.quantile(values, q)) * 1e3


def _health_bound_ms(idle: list[float]) -> float:
    """The /health p99 bound under load: 100 ms, or 20x the p99 of the same server with nothing else to
    do, whichever is larger. On an idle machine the idle p99 is a few ms and the bound stays 100 ms; on a
    machine that other work keeps busy, every answer is slower, loaded or not, and the bound grows with
    it. A /health stuck behind pooling on the event loop still misses it: it waits for the pooling,
    which the idle probes never do."""
    return max(HEALTH_P99_MS, 20 * _ms(idle, 0.99))


def test_sixty_four_clients_for_thirty_seconds() -> None:
    with live_server_process() as live:
        cases = _cases()
        with httpx.Client(base_url=live.url, trust_env=False, timeout=30) as client:
            idle = []
            for _ in range(IDLE_PROBES):
                start = time.perf_counter()
                assert client.get("/health").status_code == 200
                idle.append(time.perf_counter() - start)
                time.sleep(0.02)
            for i, case in enumerate(cases):  # the solo answer of every seeded case
                if "seed=" in case.name:
                    solo = client.post(
                        case.path, content=case.body, headers={"content-type": case.content_type}
                    )
                    assert solo.status_code == 200, solo.text
                    cases[i] = Case(
                        case.name, case.path, case.body, case.content_type, case.accept, solo.content
                    )
        warm = asyncio.run(_run(live.url, cases, WARM_UP_SECONDS))
        assert not warm.errors, warm.errors[:5]
        rss_warm = _rss(live.process.pid)
        tally, health = _run_with_probe(live.url, cases, LOAD_SECONDS)
        rss_after = _rss(live.process.pid)

    total = sum(len(v) for v in tally.latencies.values())
    print(
        f"\nload: {CLIENTS} clients, {LOAD_SECONDS:.0f} s, {total} requests, {total / LOAD_SECONDS:.0f} req/s"
    )
    for name, values in tally.latencies.items():
        print(
            f"  {name:32s} n={len(values):6d} p50={_ms(values, 0.5):7.1f} ms p99={_ms(values, 0.99):7.1f} ms"
        )
    bound = _health_bound_ms(idle)
    print(
        f"  /health under load: n={len(health)} p50={_ms(health, 0.5):.1f} ms p99={_ms(health, 0.99):.1f} ms"
        f" (bound {bound:.0f} ms; idle p99 {_ms(idle, 0.99):.1f} ms)"
    )
    print(
        f"  RSS after warm-up {rss_warm / 2**20:.0f} MiB, after load {rss_after / 2**20:.0f} MiB "
        f"({(rss_after / rss_warm - 1) * 100:+.1f}%)"
    )
    print(f"  errors {len(tally.errors)}, seeded mismatches {tally.mismatches}")
    assert not tally.errors, tally.errors[:5]
    assert tally.mismatches == 0
    assert _ms(health, 0.99) < bound
    assert abs(rss_after - rss_warm) <= 0.10 * rss_warm
