"""Benchmark: the HTTP service against the same work done in process, one run, real uvicorn on loopback.

    PYTHONPATH=. python bench/service.py [--repeats 40] [--seconds 5]

- npy:   1×64×112×112 fp32, avg k2; p50 over HTTP / p50 of np.load + pool + np.save in process (≤ 1.5×).
         Also the transport floor: the same body posted to /bench/echo, a bare route that reads it as
         /pool does and answers as many bytes as /pool (no decode, pool or encode), as a ratio to the
         same baseline; HTTP − floor is what the service adds on top of moving the bytes.
- json:  1×3×224×224 fp32, avg k2; p50 over HTTP / p50 of orjson.loads + np.asarray + pool + orjson.dumps
         in process (≤ 2×).
- small: 1×1×8×8 JSON, 16 concurrent keep-alive clients; req/s of /pool/avg / req/s of a bare route
         returning a constant in the same server (≥ 0.6×). The bare routes exist only with
         POOLSERVE_BENCH_ROUTES=true, which this script sets for its own server.
- oip:   the npy case's request through tritonclient with binary data, over HTTP (/v2/models/avg/infer)
         and over gRPC (POOLSERVE_GRPC_PORT, which this script sets too); p50 of each / p50 of the same
         request through /pool with npy, timed in turn in the same run (≤ 1.2× each).

Timings on a shared machine are noisy: the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import io
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import orjson
import torch

import poolcore

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def server(torch_threads: int) -> Iterator[tuple[str, int, int]]:
    """uvicorn on a loopback socket bound here (port 0) and handed over with --fd; the Open Inference
    Protocol's gRPC service on a free port (the last of the three values)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Accepted sockets inherit TCP_NODELAY (uvicorn's --fd socket is not known to be TCP, so asyncio
    # would not set it), as they have it when uvicorn binds --host/--port itself.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    with socket.socket() as probe:  # a free port for gRPC (closed again: grpc binds it itself)
        probe.bind(("127.0.0.1", 0))
        grpc_port = probe.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "POOLSERVE_BENCH_ROUTES": "true",
        "POOLSERVE_DEVICE": os.environ.get("POOLSERVE_DEVICE", "cpu"),
        "POOLSERVE_TORCH_THREADS": str(torch_threads),
        "POOLSERVE_GRPC_PORT": str(grpc_port),
    }
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "service.app:app",
        "--fd",
        str(sock.fileno()),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, pass_fds=(sock.fileno(),))
    sock.close()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"uvicorn exited with {proc.returncode}")
            try:
                if httpx.get(f"{base}/ready", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("server not ready after 180 s")
            time.sleep(0.2)
        yield base, port, grpc_port
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


class RawClient:
    """A minimal keep-alive HTTP/1.1 client on one socket (like curl: one write per request, TCP_NODELAY),
    so client-side Python overhead stays out of the server's latency."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A send buffer that holds a whole request: sendall returns at once and the server drains it at
        # its own pace, instead of waiting for this process to be scheduled again on a busy machine.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        self.buffer = b""
        self.timings: list[dict[str, float]] = []  # Server-Timing and X-Pool-Elapsed-Ms of each answer

    def post(self, path: str, body: bytes, content_type: str) -> bytes:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.sock.sendall(head + body)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(1 << 20)
        header, _, rest = self.buffer.partition(b"\r\n\r\n")
        self._record(header)
        if not header.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"{path}: {header[:60]!r}")
        length = next(
            int(v)
            for k, _, v in (h.partition(b":") for h in header.split(b"\r\n"))
            if k.lower() == b"content-length"
        )
        chunks = [rest]
        have = len(rest)
        while have < length:
            more = self.sock.recv(1 << 20)
            if not more:
                raise SystemExit("connection closed mid-response")
            chunks.append(more)
            have += len(more)
        data = b"".join(chunks)
        self.buffer = data[length:]
        return data[:length]

    def _record(self, header: bytes) -> None:
        timing: dict[str, float] = {}
        for line in header.split(b"\r\n")[1:]:
            key, _, value = line.decode("latin-1").partition(":")
            if key.lower() == "server-timing":
                for part in value.split(","):
                    name, _, dur = part.strip().partition(";dur=")
                    timing[name] = float(dur)
            elif key.lower() == "x-pool-elapsed-ms":
                timing["pool"] = float(value)
        if timing:
            self.timings.append(timing)

    def breakdown(self) -> str:
        """Median server-side split of the answers since the last call."""
        if not self.timings:
            return ""
        parts = [
            f"{key} {statistics.median(t[key] for t in self.timings if key in t):.2f} ms"
            for key in ("read", "run", "pool")
            if any(key in t for t in self.timings)
        ]
        self.timings = []
        return "server side (p50): " + ", ".join(parts)

    def close(self) -> None:
        self.sock.close()


def paired_p50s(
    *fns: Callable[[], object], repeats: int, warmup: int = 10, settle: float = 0.01
) -> tuple[float, ...]:
    """p50 of each of ``fns``, timed in turn so that all see the same machine load.

    Each timed call starts after ``settle`` seconds of idling: torch's OpenMP threads busy-wait for a
    while after each parallel region, so without it the server's work right after an in-process call
    competes with this process's still-spinning threads (on 2 cores that doubled the server's decode +
    pool + encode time), while the in-process call never meets the server's in the same way.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times, strict=True):
            time.sleep(settle)
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return tuple(statistics.median(spent) for spent in times)


def npy_case(client: RawClient, repeats: int) -> tuple[float, float, float]:
    """p50 over HTTP, in process, and of the transport floor: the same body posted to /bench/echo, which
    reads it as /pool does and answers as many bytes as /pool's answer, with no work in between."""
    x = np.random.default_rng(0).standard_normal((1, 64, 112, 112)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, x)
    body = buf.getvalue()

    def in_process() -> bytes:
        a = np.load(io.BytesIO(body), allow_pickle=False)
        with torch.inference_mode():
            y = poolcore.pool(torch.from_numpy(a), "avg", kernel_size=2)
        out = io.BytesIO()
        np.save(out, y.numpy())
        return out.getvalue()

    def over_http() -> bytes:
        return client.post("/pool/avg?kernel_size=2", body, "application/x-npy")

    expected = in_process()
    if over_http() != expected:
        raise SystemExit("npy: HTTP and in-process results differ")
    echo_path = f"/bench/echo?size={len(expected)}"

    def floor() -> bytes:
        return client.post(echo_path, body, "application/x-npy")

    if len(floor()) != len(expected):
        raise SystemExit("npy: /bench/echo answered the wrong number of bytes")
    http, local, transport = paired_p50s(over_http, in_process, floor, repeats=repeats)
    return http, local, transport


def json_case(client: RawClient, repeats: int) -> tuple[float, float]:
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    body = orjson.dumps({"data": x, "params": {"kernel_size": 2}}, option=orjson.OPT_SERIALIZE_NUMPY)

    def in_process() -> bytes:
        doc = orjson.loads(body)
        a = np.asarray(doc["data"]).astype(np.float32)  # faster than asarray(..., dtype=float32)
        with torch.inference_mode():
            y = poolcore.pool(torch.from_numpy(a), "avg", **doc["params"])
        return orjson.dumps(
            {"shape": list(y.shape), "dtype": "float32", "data": y.numpy()}, option=orjson.OPT_SERIALIZE_NUMPY
        )

    def over_http() -> bytes:
        return client.post("/pool/avg", body, "application/json")

    if orjson.loads(over_http())["data"] != orjson.loads(in_process())["data"]:
        raise SystemExit("json: HTTP and in-process results differ")
    http, local = paired_p50s(over_http, in_process, repeats=repeats)
    return http, local


def oip_case(client: RawClient, port: int, grpc_port: int, repeats: int) -> tuple[float, float, float]:
    """p50 of the npy case's request through /pool (npy), and through tritonclient with binary data over
    HTTP and over gRPC, timed in turn."""
    import tritonclient.grpc as triton_grpc  # the test extras; imported here, as only this case needs it
    import tritonclient.http as triton_http

    x = np.random.default_rng(0).standard_normal((1, 64, 112, 112)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, x)
    body = buf.getvalue()
    http_client = triton_http.InferenceServerClient(f"127.0.0.1:{port}")
    grpc_client = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    http_input = triton_http.InferInput("input", list(x.shape), "FP32")
    http_input.set_data_from_numpy(x, binary_data=True)
    http_output = [triton_http.InferRequestedOutput("output", binary_data=True)]
    grpc_input = triton_grpc.InferInput("input", list(x.shape), "FP32")
    grpc_input.set_data_from_numpy(x)
    params = {"kernel_size": 2}

    def pool_npy() -> np.ndarray:
        return np.load(io.BytesIO(client.post("/pool/avg?kernel_size=2", body, "application/x-npy")))

    def over_http() -> np.ndarray:
        result = http_client.infer("avg", [http_input], outputs=http_output, parameters=params)
        return result.as_numpy("output")

    def over_grpc() -> np.ndarray:
        return grpc_client.infer("avg", [grpc_input], parameters=params).as_numpy("output")

    expected = pool_npy()
    for name, fn in (("http", over_http), ("grpc", over_grpc)):
        if not np.array_equal(fn(), expected):
            raise SystemExit(f"oip {name}: tritonclient's result differs from /pool's")
    try:
        pool, http, grpc = paired_p50s(pool_npy, over_http, over_grpc, repeats=repeats)
    finally:
        http_client.close()
        grpc_client.close()
    return pool, http, grpc


async def _hammer(port: int, path: str, body: bytes, clients: int, seconds: float) -> float:
    """``clients`` keep-alive connections, each sending one request after another; returns req/s.

    A minimal HTTP/1.1 client on asyncio streams, so the load generator costs little CPU next to the
    server it measures.
    """
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    stop = time.perf_counter() + seconds
    counts = [0] * clients

    async def one(i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise SystemExit(f"{path}: {head[:40]!r}")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                counts[i] += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(clients)))
    return sum(counts) / (time.perf_counter() - start)


def small_case(port: int, seconds: float) -> tuple[float, float]:
    """Throughput of /pool/avg and /bench/constant, in alternating one-second slices (same load)."""
    x = np.random.default_rng(2).standard_normal((1, 1, 8, 8)).astype(np.float32)
    body = orjson.dumps({"data": x, "params": {"kernel_size": 2}}, option=orjson.OPT_SERIALIZE_NUMPY)
    asyncio.run(_hammer(port, "/bench/constant", body, 16, 0.5))  # warm-up
    asyncio.run(_hammer(port, "/pool/avg", body, 16, 0.5))
    pool, constant = [], []
    for _ in range(max(1, round(seconds))):
        pool.append(asyncio.run(_hammer(port, "/pool/avg", body, 16, 1.0)))
        constant.append(asyncio.run(_hammer(port, "/bench/constant", body, 16, 1.0)))
    return statistics.mean(pool), statistics.mean(constant)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=40, help="timed requests per latency case")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of each throughput run")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch threads for the server (POOLSERVE_TORCH_THREADS) and the in-process baseline alike "
        "(default: torch's default here)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    load_before = os.getloadavg()
    with server(args.torch_threads) as (_, port, grpc_port):
        client = RawClient(port)
        try:
            client.timings = []
            npy_http, npy_local, npy_floor = npy_case(client, args.repeats)
            npy_split = client.breakdown()
            json_http, json_local = json_case(client, max(10, args.repeats // 2))
            json_split = client.breakdown()
            oip_pool, oip_http, oip_grpc = oip_case(client, port, grpc_port, args.repeats)
            client.timings = []
        finally:
            client.close()
        pool_rps, constant_rps = small_case(port, args.seconds)
    load_after = os.getloadavg()

    rows = [
        (
            "npy 1×64×112×112 avg k2",
            f"{npy_http * 1e3:.2f} ms",
            f"{npy_local * 1e3:.2f} ms",
            npy_http / npy_local,
            "≤ 1.5×",
            npy_http / npy_local <= 1.5,
        ),
        (
            "json 1×3×224×224 avg k2",
            f"{json_http * 1e3:.2f} ms",
            f"{json_local * 1e3:.2f} ms",
            json_http / json_local,
            "≤ 2×",
            json_http / json_local <= 2.0,
        ),
        (
            "small 1×1×8×8, 16 clients",
            f"{pool_rps:.0f} req/s",
            f"{constant_rps:.0f} req/s",
            pool_rps / constant_rps,
            "≥ 0.6×",
            pool_rps / constant_rps >= 0.6,
        ),
        # The Open Inference Protocol (issue 11): tritonclient, binary data, against /pool with npy.
        (
            "oip http 1×64×112×112 avg k2",
            f"{oip_http * 1e3:.2f} ms",
            f"{oip_pool * 1e3:.2f} ms",
            oip_http / oip_pool,
            "≤ 1.2×",
            oip_http / oip_pool <= 1.2,
        ),
        (
            "oip grpc 1×64×112×112 avg k2",
            f"{oip_grpc * 1e3:.2f} ms",
            f"{oip_pool * 1e3:.2f} ms",
            oip_grpc / oip_pool,
            "≤ 1.2×",
            oip_grpc / oip_pool <= 1.2,
        ),
    ]
    threads = torch.get_num_threads()
    # uvicorn picks httptools and uvloop (uvicorn[standard]) when importable, else h11 and asyncio.
    parser_name = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop_name = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    print(f"poolserve service benchmark: torch {torch.__version__}, {os.cpu_count()} CPUs, {threads} threads")
    print(f"uvicorn: {parser_name} parser, {loop_name} loop, 1 worker")
    print(
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min): shared machine, noisy"
    )
    print(f"{'case':28} {'HTTP':>14} {'baseline':>14} {'ratio':>7}  {'target':>7}  result")
    for name, http, local, ratio, target, ok in rows:
        print(f"{name:28} {http:>14} {local:>14} {ratio:>6.2f}×  {target:>7}  {'PASS' if ok else 'MISS'}")
    floor_name = "npy transport floor (bare route, same bytes)"
    print(f"{floor_name:45} {npy_floor * 1e3:>8.2f} ms {npy_floor / npy_local:>6.2f}× of the baseline")
    print(f"{'npy overhead above floor (HTTP − floor)':45} {(npy_http - npy_floor) * 1e3:>8.2f} ms")
    print(f"npy  {npy_split}")
    print(f"json {json_split}")
    print("(read = body received by the app; run = decode + pool + encode in a worker thread, queueing")
    print("included; pool = the operator alone; the rest of HTTP is the transport and the client)")
    print("baselines: npy = np.load + pool + np.save in process (p50); json = orjson.loads + np.asarray")
    print("+ pool + orjson.dumps in process (p50); small = a bare route returning a constant, same server")
    print("npy transport floor = /bench/echo: the body read like /pool's, as many zero bytes answered")
    print("oip = tritonclient (binary data) over HTTP and gRPC; baseline: the same request to /pool with npy")


if __name__ == "__main__":
    main()
