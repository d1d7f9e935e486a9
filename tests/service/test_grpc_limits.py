"""The gRPC side's limits (:mod:`service.grpc_limits` on its own, then a real server: ``poolserve`` in a
subprocess, gRPC on a free loopback port, API keys on), with memory measured as the server's VmRSS
(issue 17, findings 1, 2 and 9):

- a call without a valid key is refused from its metadata, before its message is read;
- streams per connection are capped (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS), idle connections close, a
  message that does not arrive within ``POOLSERVE_BODY_TIMEOUT`` is cancelled and its memory freed, and
  the bytes of messages still arriving are bounded across connections;
- 20 wrong keys from one client address within a minute lock it out for a minute.

A gRPC client library sends whole messages and respects the server's stream limit, so the hostile
clients here speak bare HTTP/2 (``raw_h2``). Every load goes to 127.0.0.1 only, bounded in count and time.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2

from service.grpc_limits import ArrivalRoom, peer_host

from .raw_h2 import RawH2, grpc_prefix
from .support import HEADLESS, ROOT, LiveServer, free_port, live_server_process

KEY = "k-limits-0123456789"
RIGHT = (("authorization", f"Bearer {KEY}"),)
MiB = 1 << 20
INFER = "/inference.GRPCInferenceService/ModelInfer"
METADATA = "/inference.GRPCInferenceService/ServerMetadata"
LIVE = "/inference.GRPCInferenceService/ServerLive"


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:127.0.0.1:50051", "127.0.0.1"),
        ("ipv6:[::1]:50051", "::1"),
        ("ipv6:%5B2001:db8::7%5D:443", "2001:db8::7"),
        ("unix:/run/poolserve.sock", "unix:/run/poolserve.sock"),
        ("", None),
        (None, None),
    ],
)
def test_peer_host(peer: str | None, host: str | None) -> None:
    assert peer_host(peer) == host


class TestArrivalRoom:
    def test_at_and_past_the_capacity(self) -> None:
        async def run() -> None:
            room = ArrivalRoom(8)
            await room.reserve(4)
            await room.reserve(4)  # at the capacity
            third = asyncio.create_task(room.reserve(4))  # past it: waits
            await asyncio.sleep(0.01)
            assert not third.done() and room.used == 8
            room.release(4)
            await asyncio.wait_for(third, 1)
            assert room.used == 8

        asyncio.run(run())

    def test_first_come_first_served(self) -> None:
        async def run() -> None:
            room = ArrivalRoom(8)
            await room.reserve(6)
            big = asyncio.create_task(room.reserve(8))
            await asyncio.sleep(0)
            small = asyncio.create_task(room.reserve(1))  # would fit, but comes second
            await asyncio.sleep(0.01)
            assert not big.done() and not small.done()
            room.release(6)
            await asyncio.wait_for(big, 1)
            assert not small.done()
            room.release(8)
            await asyncio.wait_for(small, 1)
            assert room.used == 1

        asyncio.run(run())

    def test_a_wait_given_up_takes_nothing(self) -> None:
        async def run() -> None:
            room = ArrivalRoom(8)
            await room.reserve(8)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(room.reserve(8), 0.01)
            later = asyncio.create_task(room.reserve(8))
            await asyncio.sleep(0)
            room.release(8)
            await asyncio.wait_for(later, 1)  # the abandoned waiter took nothing and is not in the way
            assert room.used == 8

        asyncio.run(run())

    def test_granted_as_the_wait_is_given_up(self) -> None:
        async def run() -> None:
            room = ArrivalRoom(8)
            await room.reserve(8)
            waiter = asyncio.create_task(room.reserve(8))
            await asyncio.sleep(0)
            room.release(8)  # grants the waiter's turn...
            waiter.cancel()  # ...which is cancelled before it runs again
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert room.used == 0

        asyncio.run(run())


def _free_port() -> int:
    return free_port()


def rss(pid: int) -> int:
    """The process's resident memory in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class Peak:
    """The highest RSS of a process, sampled every 20 ms in a thread while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = rss(pid)
        self.high = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.high = max(self.high, rss(self.pid))

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.high = max(self.high, rss(self.pid))


def settle(pid: int, target: int, within: float) -> int:
    """RSS once it is at or under ``target``, or after ``within`` seconds, whichever comes first."""
    deadline = time.monotonic() + within
    while True:
        now = rss(pid)
        if now <= target or time.monotonic() > deadline:
            return now
        time.sleep(0.25)


class Grpc:
    """A server with its gRPC address and a plain channel to it (bytes in, bytes out)."""

    def __init__(self, live: LiveServer, port: int, body_timeout: float) -> None:
        self.live = live
        self.port = port
        self.body_timeout = body_timeout
        self.address = f"127.0.0.1:{port}"

    @property
    def pid(self) -> int:
        return self.live.process.pid

    def call(self, path: str, message: bytes, metadata: Any = RIGHT, timeout: float = 60.0) -> Any:
        with grpc.insecure_channel(self.address) as channel:
            return channel.unary_unary(path)(message, metadata=metadata, timeout=timeout)

    def error(self, call: Callable[[], Any]) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        return caught.value


def _serve(env: dict[str, str], max_body: int, body_timeout: float) -> Iterator[Grpc]:
    port = _free_port()
    env = {
        "POOLSERVE_GRPC_PORT": str(port),
        "POOLSERVE_API_KEYS": KEY,
        "POOLSERVE_BODY_TIMEOUT": str(body_timeout),
        **HEADLESS,
        **env,
    }
    limits = {"max_body_bytes": max_body, "max_elements": 1 << 22, "max_image_pixels": 1 << 16}
    with live_server_process(env, limits=limits) as live:
        yield Grpc(live, port, body_timeout)


@pytest.fixture(scope="module")
def big() -> Iterator[Grpc]:
    """The sizes of the issue: 64 MiB messages allowed, default stream and buffer limits."""
    yield from _serve({}, max_body=64 * MiB, body_timeout=5.0)


@pytest.fixture(scope="module")
def small() -> Iterator[Grpc]:
    """Small limits, so that each can be reached in a few calls: 8 streams a connection, 2 s idle, room
    for eight 1 MiB messages arriving at once; 127.0.0.1 is a trusted proxy."""
    env = {
        "POOLSERVE_GRPC_MAX_STREAMS": "8",
        "POOLSERVE_GRPC_IDLE_SECONDS": "2",
        "POOLSERVE_GRPC_MAX_BUFFERED_BYTES": str(8 * MiB),
        "POOLSERVE_TRUSTED_PROXIES": "127.0.0.1",
    }
    yield from _serve(env, max_body=MiB, body_timeout=6.0)


def _infer_message(size: int) -> bytes:
    """A ModelInferRequest of about ``size`` bytes (one raw input), serialized."""
    request = service_pb2.ModelInferRequest(model_name="avg")
    request.inputs.add(name="input", datatype="UINT8", shape=[size])
    request.raw_input_contents.append(bytes(size))
    return request.SerializeToString()


@pytest.mark.slow
def test_no_key_is_refused_before_the_message_is_read(big: Grpc) -> None:
    """Finding 1: 16 ModelInfer calls of 60 MiB without metadata, four at a time: every one gets
    UNAUTHENTICATED, RSS grows by less than 256 MiB, and is back within 64 MiB of the start 5 s later."""
    message = _infer_message(60 * MiB)
    big.call(LIVE, b"")  # the channel machinery is warm before the baseline
    with grpc.insecure_channel(big.address) as channel:
        infer = channel.unary_unary(INFER)
        with Peak(big.pid) as peak, ThreadPoolExecutor(4) as pool:

            def one(_: int) -> grpc.StatusCode:
                try:
                    infer(message, timeout=120)
                except grpc.RpcError as error:
                    return error.code()
                return grpc.StatusCode.OK

            codes = list(pool.map(one, range(16)))
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 16
    time.sleep(5)
    after = rss(big.pid)
    grew, left = (peak.high - peak.start) / MiB, (after - peak.start) / MiB
    print(f"no-key calls: RSS {peak.start / MiB:.0f} MiB -> peak +{grew:.0f} MiB, +{left:.0f} MiB 5 s later")
    assert grew < 256, f"RSS grew by {grew:.0f} MiB for messages that were refused"
    assert left < 64, f"RSS still {left:.0f} MiB above the start 5 s later"


@pytest.mark.slow
@pytest.mark.parametrize("connections", [1, 3])
def test_a_thousand_streams_that_never_finish(big: Grpc, connections: int) -> None:
    """Finding 2: one connection (and then three) opens 1,000 streams, each sending 800 KB of a message
    announced as 64 MiB. RSS grows by less than 512 MiB; every stream is ended within the body timeout +
    10 s; once the client has closed, RSS is back within 128 MiB of the start within that time."""
    streams, part = 1000, 800_000
    chunk = grpc_prefix(64 * MiB) + bytes(part - 5)
    limit = big.body_timeout + 10
    clients = [RawH2("127.0.0.1", big.port) for _ in range(connections)]
    opened: dict[tuple[int, int], float] = {}
    sent: dict[tuple[int, int], int] = {}
    with Peak(big.pid) as peak:
        try:
            for n, client in enumerate(clients):
                client.pump(0.5)  # the server's SETTINGS first
                for _ in range(streams):
                    key = (n, client.open_stream(INFER, RIGHT))
                    opened[key], sent[key] = time.monotonic(), 0
            deadline = time.monotonic() + limit + 5
            while time.monotonic() < deadline and any(
                len(c.ended) < streams and not c.closed for c in clients
            ):
                for n, sid in opened:
                    if sent[n, sid] < part:
                        sent[n, sid] += clients[n].send_some(sid, chunk[sent[n, sid] :])
                for client in clients:
                    client.pump(0.05 / connections)
        finally:
            for client in clients:
                client.close()
            closed_at = time.monotonic()
    late = [key for key, t in opened.items() if clients[key[0]].ended.get(key[1], closed_at) - t > limit]
    after = settle(big.pid, peak.start + 128 * MiB, limit)
    grew, left = (peak.high - peak.start) / MiB, (after - peak.start) / MiB
    refused = sum(len(c.refused) for c in clients)
    print(
        f"{connections} x 1000 streams: advertised {clients[0].max_streams}, {refused} refused, "
        f"{sum(sent.values()) / MiB:.0f} MiB sent, RSS +{grew:.0f} MiB at peak, +{left:.0f} MiB after"
    )
    assert grew < 512, f"RSS grew by {grew:.0f} MiB"
    assert not late, f"{len(late)} streams were not ended within {limit:g} s"
    assert left < 128, f"RSS still {left:.0f} MiB above the start after the client closed"


@pytest.mark.slow
def _hold(client: RawH2, count: int) -> list[int]:
    """``count`` ModelInfer streams on ``client``, each with part of a message: each takes a message's
    room on the server until the body timeout ends it."""
    streams = [client.open_stream(INFER, RIGHT) for _ in range(count)]
    for sid in streams:
        client.send_some(sid, grpc_prefix(MiB // 2) + bytes(1000))
    client.pump(1.0)  # the server starts reading each (a busy machine can take a while)
    return streams


def test_streams_per_connection_are_capped(small: Grpc) -> None:
    """POOLSERVE_GRPC_MAX_STREAMS is advertised, and a stream past it is refused while those at it stay."""
    client = RawH2("127.0.0.1", small.port)
    try:
        client.pump(0.5)
        assert client.max_streams == 8
        held = _hold(client, 8)
        assert not client.ended, "a stream at the limit was ended"
        extra = client.open_stream(LIVE, RIGHT)
        deadline = time.monotonic() + 5
        while extra not in client.ended and time.monotonic() < deadline:
            client.pump(0.1)
        assert extra in client.refused
        assert not any(sid in client.ended for sid in held)
    finally:
        client.close()
        time.sleep(1)  # the server cancels the held calls, which gives their room back


@pytest.mark.slow
def test_idle_connections_are_closed(small: Grpc) -> None:
    """A connection with no call for POOLSERVE_GRPC_IDLE_SECONDS (2 s here) is closed by the server."""
    client = RawH2("127.0.0.1", small.port)
    try:
        deadline = time.monotonic() + 2 + 10
        while not (client.goaway or client.closed) and time.monotonic() < deadline:
            client.pump(0.2)
        assert client.goaway or client.closed, "the idle connection is still open"
    finally:
        client.close()


@pytest.mark.slow
def test_a_message_that_does_not_arrive_is_cancelled(small: Grpc) -> None:
    """A call whose message does not come within the body timeout ends with DEADLINE_EXCEEDED naming it,
    whether the message never started or stopped half-way."""

    def never() -> Iterator[bytes]:
        time.sleep(small.body_timeout + 5)
        yield b""

    with grpc.insecure_channel(small.address) as channel:
        call = channel.stream_unary(INFER)
        error = small.error(lambda: call(never(), metadata=RIGHT, timeout=60))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert f"did not arrive within {small.body_timeout:g} s" in (error.details() or "")
    client = RawH2("127.0.0.1", small.port)
    try:
        sid = client.open_stream(INFER, RIGHT)
        start = time.monotonic()
        client.pump(0.2)
        client.send_some(sid, grpc_prefix(MiB // 2) + bytes(1000))
        while sid not in client.ended and time.monotonic() - start < small.body_timeout + 10:
            client.pump(0.2)
        assert sid in client.ended
    finally:
        client.close()


@pytest.mark.slow
def test_bytes_still_arriving_are_bounded(small: Grpc) -> None:
    """Room for eight 1 MiB messages arriving at once (8 MiB, across connections): with seven held
    half-sent, a call succeeds; with eight held, another is refused with RESOURCE_EXHAUSTED within a
    second or so; once they are gone, calls succeed again."""
    holder = RawH2("127.0.0.1", small.port)
    try:
        holder.pump(0.3)
        _hold(holder, 7)
        assert small.call(METADATA, b"", timeout=30) is not None  # at the limit: room for one more
        _hold(holder, 1)
        assert not holder.ended
        started = time.monotonic()
        error = small.error(lambda: small.call(METADATA, b"", timeout=30))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "POOLSERVE_GRPC_MAX_BUFFERED_BYTES" in (error.details() or "")
        assert time.monotonic() - started < 10
        assert not holder.ended, "the holders timed out before the call was refused: not a test of room"
    finally:
        holder.close()
    time.sleep(1)
    assert small.call(METADATA, b"", timeout=30) is not None


@pytest.mark.slow
def test_wrong_keys_are_throttled(small: Grpc) -> None:
    """Finding 9: 19 wrong keys from a client leave it free to use a right one; the 20th locks it out: a
    right key then gets RESOURCE_EXHAUSTED with retry-after in the trailing metadata, and the refusal is
    counted. A missing key does not count; probes stay open; other clients are not affected.

    The client is named by X-Forwarded-For, which counts because 127.0.0.1 is a trusted proxy here: so the
    tests' own address is never locked out, and the peer address is shown to be parsed."""
    guesser = (("x-forwarded-for", "203.0.113.7"),)
    wrong = (("authorization", "Bearer not-the-key-0000"), *guesser)
    for _ in range(25):
        error = small.error(lambda: small.call(METADATA, b"", metadata=guesser))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    for _ in range(19):
        error = small.error(lambda: small.call(METADATA, b"", metadata=wrong))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert small.call(METADATA, b"", metadata=(*RIGHT, *guesser)) is not None
    error = small.error(lambda: small.call(METADATA, b"", metadata=wrong))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED  # the 20th
    error = small.error(lambda: small.call(METADATA, b"", metadata=(*RIGHT, *guesser)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailing = dict(error.trailing_metadata() or ())
    assert 55 <= int(trailing["retry-after"]) <= 60
    assert small.call(LIVE, b"", metadata=guesser) is not None  # probes are exempt
    assert small.call(METADATA, b"") is not None  # the proxy itself, and everyone behind it, are not
    metrics = httpx.get(
        f"{small.live.url}/metrics", headers={"authorization": f"Bearer {KEY}"}, trust_env=False
    ).text
    assert "poolserve_auth_throttled_total 1.0" in metrics


@pytest.mark.slow
def test_refusals_and_cancellations_are_logged(tmp_path: Path) -> None:
    """A warning names the RPC and the client for each refused key and each call ended by a limit."""
    http_port, grpc_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "POOLSERVE_DEVICE": "cpu",
        "POOLSERVE_GRPC_PORT": str(grpc_port),
        "POOLSERVE_API_KEYS": KEY,
        "POOLSERVE_BODY_TIMEOUT": "1",
        **HEADLESS,
    }
    command = [sys.executable, "-m", "service", "--port", str(http_port), "--log-level", "warning"]
    log_path = tmp_path / "stderr.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=log_file)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                url = f"http://127.0.0.1:{http_port}/ready"
                if httpx.get(url, timeout=2.0, trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not get ready"
            time.sleep(0.2)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            metadata = channel.unary_unary(METADATA)
            for sent in ((), (("authorization", "Bearer not-the-key-0000"),)):
                with pytest.raises(grpc.RpcError):
                    metadata(b"", metadata=sent, timeout=30)

            def never() -> Iterator[bytes]:
                time.sleep(4)
                yield b""

            with pytest.raises(grpc.RpcError):
                channel.stream_unary(INFER)(never(), metadata=RIGHT, timeout=30)
    finally:
        process.terminate()
        process.wait(30)
    lines = log_path.read_text()
    assert "gRPC ServerMetadata from 127.0.0.1 refused: this route needs an API key" in lines
    assert "gRPC ServerMetadata from 127.0.0.1 refused: invalid API key" in lines
    assert "gRPC ModelInfer from ipv4:127.0.0.1:" in lines
    assert "cancelled: its message did not arrive in time" in lines
    assert KEY not in lines
