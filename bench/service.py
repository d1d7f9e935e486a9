"""Benchmark: poolserve against what a user would run instead, on this machine, in one run.

    PYTHONPATH=. python bench/service.py [--seconds 8] [--rounds 1] [--oip] [--busy N] [--baseline REV]
    make bench-service      # installs wrk (Debian) and LitServe (the bench extras) first

The peers (``bench/peers/``), each started here as its own server process on loopback:

- ``plain``: the FastAPI endpoint a user writes in ten minutes (async route, ``await request.body()``,
  orjson / ``np.load``, ``F.avg_pool2d`` inline on the event loop, orjson / ``np.save`` back);
- ``litserve``: LitServe's documented JSON API, one worker (JSON only, so no npy rows).

All three run on uvicorn with httptools and uvloop (uvicorn[standard]), one process. ``wrk`` (an outside
load generator, one thread) drives each in turn with the same request bytes, ``--seconds`` per case and
server; every server's answer is first checked against ``F.avg_pool2d`` in process. Cases and targets
(poolserve against the plain endpoint, in the same run):

| case                                 | target                                    |
|--------------------------------------|-------------------------------------------|
| small JSON 1×1×8×8, 16 connections   | req/s ≥ 1.0×, p99 ≤ 2× the plain endpoint's |
| JSON 1×3×224×224, 1 connection       | req/s ≥ 1.0×                              |
| npy 1×64×112×112, 1 connection       | req/s ≥ 1.5×                              |
| npy 1×64×112×112, 4 connections      | req/s ≥ 1.2×; ``/health`` p99 < 100 ms    |

For the last case a second wrk asks ``GET /health`` over one connection while the 4 connections pool:
the p99 of those answers is printed for poolserve and for the plain endpoint (whose event loop is busy
pooling). ``--oip`` adds the Open Inference Protocol rows: the npy request through tritonclient (binary
data) over HTTP and gRPC, as p50 ratios to the same request to ``/pool`` with npy (target ≤ 1.2× each).

``--busy N`` runs N processes that spin on a core each throughout, for a machine doing other work.
``--baseline REV`` also serves poolserve at git revision REV (exported to a temporary directory), in
turn with this checkout in every round, and adds new÷old per case: a before and after from one run.
Timings on a shared machine are noisy: the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import orjson
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
SERVERS = ("poolserve", "plain", "litserve")
PEERS = SERVERS[1:]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _env(root: Path = ROOT, **extra: str) -> dict[str, str]:
    # Another tree (--baseline) gets its own path alone: the caller's PYTHONPATH may name this checkout.
    path = [str(root)] if root != ROOT else [str(ROOT), os.environ.get("PYTHONPATH")]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, path)),
        "GRADIO_ANALYTICS_ENABLED": "False",
        **extra,
    }


@contextmanager
def _process(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    base: str,
    ready: str,
    root: Path = ROOT,
    **popen: object,
) -> Iterator[None]:
    # A session of its own: LitServe's worker processes go down with the server (one signal to the group).
    proc = subprocess.Popen(cmd, cwd=root, env=env, start_new_session=True, **popen)  # type: ignore[call-overload]
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited with {proc.returncode}")
            try:
                if httpx.get(f"{base}{ready}", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} not ready after 180 s")
            time.sleep(0.2)
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
        with contextlib.suppress(ProcessLookupError):  # what is left of the group
            os.killpg(proc.pid, signal.SIGKILL)


@contextmanager
def poolserve(torch_threads: int | None, grpc: bool, root: Path = ROOT) -> Iterator[tuple[str, int, int]]:
    """poolserve's own server (``python -m service --fd``, the guarded protocol and all) on a loopback
    socket bound here, with its default settings like the peers; with ``grpc``, the Open Inference
    Protocol's gRPC service too, on a free port. ``root``: the source tree it runs from (this checkout,
    or an old revision's for ``--baseline``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Accepted sockets inherit TCP_NODELAY (asyncio does not set it on an --fd socket it can't tell is
    # TCP), as they have it when the server binds a host and port itself.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    grpc_port = _free_port()
    env = _env(root, POOLSERVE_DEVICE=os.environ.get("POOLSERVE_DEVICE", "cpu"))
    if torch_threads is not None:
        env["POOLSERVE_TORCH_THREADS"] = str(torch_threads)
    if grpc:
        env["POOLSERVE_GRPC_PORT"] = str(grpc_port)
    cmd = [sys.executable, "-m", "service", "--fd", str(sock.fileno()), "--log-level", "warning"]
    base = f"http://127.0.0.1:{port}"
    try:
        with _process("poolserve", cmd, env, base, "/ready", root, pass_fds=(sock.fileno(),)):
            sock.close()
            yield base, port, grpc_port
    finally:
        sock.close()


def export_revision(rev: str, into: Path) -> Path:
    """The tracked files of git revision ``rev`` of this checkout, written under ``into`` (``git
    archive``: no work tree, no checkout state touched), for serving an old poolserve beside this one."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, capture_output=True, text=True
    )
    if commit.returncode != 0:
        raise SystemExit(f"--baseline {rev!r}: not a revision of this repository ({commit.stderr.strip()})")
    tree = into / f"baseline-{commit.stdout.strip()[:12]}"
    tree.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit.stdout.strip()], cwd=ROOT, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


@contextmanager
def plain() -> Iterator[str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "uvicorn", "bench.peers.plain_fastapi:app", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with _process("plain", [*cmd, "--log-level", "warning"], _env(), base, "/health"):
        yield base


@contextmanager
def litserve() -> Iterator[str]:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, str(ROOT / "bench" / "peers" / "litserve_api.py"), str(port)]
    with _process("litserve", cmd, _env(), base, "/health"):
        yield base


# wrk's Lua: the request from files named in the environment; the summary as one JSON line.
WRK_SCRIPT = """
local function read(path)
  local f = assert(io.open(path, "rb")); local s = f:read("*a"); f:close(); return s
end
if os.getenv("WRK_BODY") then
  wrk.method = "POST"
  wrk.body = read(os.getenv("WRK_BODY"))
  wrk.headers["Content-Type"] = os.getenv("WRK_TYPE")
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests": %d, "us": %d, "p50": %d, "p99": %d, "errors": %d, "non2xx": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float


def wrk(
    url: str, connections: int, seconds: float, script: Path, body: Path | None, content_type: str = ""
) -> subprocess.Popen[str]:
    env = {**os.environ, "WRK_TYPE": content_type}
    if body is not None:
        env["WRK_BODY"] = str(body)
    else:
        env.pop("WRK_BODY", None)
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(script), url]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def result(proc: subprocess.Popen[str], what: str) -> Run:
    out, _ = proc.communicate()
    match = re.search(r"^WRK (\{.*\})$", out, re.M)
    if match is None:
        raise SystemExit(f"wrk gave no summary for {what}:\n{out}")
    summary = orjson.loads(match.group(1))
    if summary["errors"] or summary["non2xx"]:
        raise SystemExit(f"{what}: {summary['errors']} socket errors, {summary['non2xx']} non-2xx answers")
    return Run(summary["requests"] / (summary["us"] / 1e6), summary["p50"] / 1e3, summary["p99"] / 1e3)


@dataclass(frozen=True)
class Case:
    name: str
    shape: tuple[int, ...]
    wire: str  # "json" or "npy"
    connections: int
    min_ratio: float  # req/s against the plain endpoint's
    max_p99_ratio: float | None = None  # p99 against the plain endpoint's
    health: bool = False  # also ask /health under this load

    def body(self) -> tuple[bytes, str, np.ndarray]:
        x = np.random.default_rng(0).standard_normal(self.shape).astype(np.float32)
        if self.wire == "npy":
            buf = io.BytesIO()
            np.save(buf, x)
            return buf.getvalue(), "application/x-npy", x
        doc = {"data": x, "params": {"kernel_size": 2}}
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), "application/json", x


CASES = (
    Case("small JSON 1×1×8×8, 16 conns", (1, 1, 8, 8), "json", 16, 1.0, max_p99_ratio=2.0),
    Case("JSON 1×3×224×224, 1 conn", (1, 3, 224, 224), "json", 1, 1.0),
    Case("npy 1×64×112×112, 1 conn", (1, 64, 112, 112), "npy", 1, 1.5),
    Case("npy 1×64×112×112, 4 conns", (1, 64, 112, 112), "npy", 4, 1.2, health=True),
)
HEALTH_P99_MS = 100.0


def _path(server: str, case: Case) -> str:
    if server == "litserve":
        return "/predict"
    return "/pool/avg?kernel_size=2" if case.wire == "npy" else "/pool/avg"


def _check_answer(server: str, url: str, body: bytes, content_type: str, x: np.ndarray) -> None:
    """Each server must give torch's answer before it is timed."""
    r = httpx.post(url, content=body, headers={"content-type": content_type}, timeout=30, trust_env=False)
    if r.status_code != 200:
        raise SystemExit(f"{server}: {r.status_code} {r.text[:200]}")
    got = (
        np.load(io.BytesIO(r.content))
        if content_type == "application/x-npy"
        else np.asarray(r.json()["data"])
    )
    expected = F.avg_pool2d(torch.from_numpy(x), 2).numpy()
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-6, atol=1e-6):
        raise SystemExit(f"{server}: wrong answer for {x.shape}")


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


def measure(
    bases: dict[str, str], seconds: float, rounds: int, workdir: Path
) -> tuple[dict[tuple[str, str], list[Run]], dict[str, list[Run]]]:
    """Every case on every server that speaks its wire format, server after server, ``rounds`` times."""
    script = workdir / "wrk.lua"
    script.write_text(WRK_SCRIPT)
    runs: dict[tuple[str, str], list[Run]] = {}
    health: dict[str, list[Run]] = {}
    for case in CASES:
        body, content_type, x = case.body()
        body_file = workdir / f"{case.wire}-{'x'.join(map(str, case.shape))}"
        body_file.write_bytes(body)
        servers = [s for s in bases if case.wire == "json" or s != "litserve"]
        for server in servers:
            url = bases[server] + _path(server, case)
            _check_answer(server, url, body, content_type, x)
            result(wrk(url, case.connections, 1, script, body_file, content_type), f"{server} warm-up")
        for round_ in range(rounds):
            # Each round starts with another server, so none always runs first (or right after another's
            # load) on a machine whose speed drifts.
            shift = round_ % len(servers)
            for server in servers[shift:] + servers[:shift]:
                url = bases[server] + _path(server, case)
                load = wrk(url, case.connections, seconds, script, body_file, content_type)
                if case.health and server != "litserve":
                    time.sleep(0.5)  # the load is on before the first /health request
                    probe = wrk(bases[server] + "/health", 1, max(1.0, seconds - 1), script, None)
                    health.setdefault(server, []).append(result(probe, f"{server} /health"))
                runs.setdefault((case.name, server), []).append(result(load, f"{server} {case.name}"))
    return runs, health


def _span(values: list[float], fmt: str) -> str:
    low, high = min(values), max(values)
    return format(low, fmt) if format(low, fmt) == format(high, fmt) else f"{low:{fmt}}–{high:{fmt}}"


def report(runs: dict[tuple[str, str], list[Run]], health: dict[str, list[Run]], servers: list[str]) -> None:
    def cell(case: Case, server: str, pick: Callable[[Run], float], fmt: str) -> str:
        found = runs.get((case.name, server))
        return _span([pick(r) for r in found], fmt) if found else "—"

    header = (
        f"{'case':30} {'req/s ' + ' / '.join(servers):>34} {'p50 ms':>20} {'p99 ms':>22} "
        f"{'÷best peer':>11} {'p99÷plain':>10}  {'target':22} result  {'/health p99 ms':>16}"
    )
    print(header)
    for case in CASES:
        rps = {
            s: statistics.median(r.rps for r in runs[(case.name, s)])
            for s in servers
            if (case.name, s) in runs
        }
        p99 = {
            s: statistics.median(r.p99_ms for r in runs[(case.name, s)])
            for s in servers
            if (case.name, s) in runs
        }
        best_peer = max((s for s in rps if s not in ("poolserve", "baseline")), key=lambda s: rps[s])
        ratio = rps["poolserve"] / rps[best_peer]
        plain_ratio = rps["poolserve"] / rps["plain"]
        p99_ratio = p99["poolserve"] / p99["plain"]
        ok = plain_ratio >= case.min_ratio
        target = f"≥ {case.min_ratio:g}× plain"
        if case.max_p99_ratio is not None:
            ok = ok and p99_ratio <= case.max_p99_ratio
            target += f", p99 ≤ {case.max_p99_ratio:g}×"
        health_cell = ""
        if case.health:
            hp99 = {s: statistics.median(r.p99_ms for r in health[s]) for s in health}
            ok = ok and hp99["poolserve"] < HEALTH_P99_MS
            target += f", /health < {HEALTH_P99_MS:g}"
            health_cell = " / ".join(f"{hp99[s]:.1f}" for s in servers if s in hp99)
        if "baseline" in rps:
            health_cell += f"  new÷old {rps['poolserve'] / rps['baseline']:.2f}×"
            health_cell += f" (p99 {p99['poolserve'] / p99['baseline']:.2f}×)"
        print(
            f"{case.name:30} {' / '.join(cell(case, s, lambda r: r.rps, '.0f') for s in servers):>34} "
            f"{' / '.join(cell(case, s, lambda r: r.p50_ms, '.1f') for s in servers):>20} "
            f"{' / '.join(cell(case, s, lambda r: r.p99_ms, '.1f') for s in servers):>22} "
            f"{ratio:>10.2f}× {p99_ratio:>9.2f}×  {target:22} {'PASS' if ok else 'MISS':6} {health_cell:>16}"
        )
    print(
        f"columns: {' / '.join(servers)}; ÷best peer = poolserve's req/s over the fastest peer's (medians);"
    )
    print("targets are against the plain endpoint; /health p99: a second wrk asking GET /health on one")
    print("connection while the case's load runs (poolserve / plain); ranges over rounds where they differ")
    if "baseline" in servers:
        print("baseline: poolserve at --baseline, run interleaved with this checkout; new÷old: req/s ratio")


def oip_rows(port: int, grpc_port: int, repeats: int) -> None:
    client = RawClient(port)
    try:
        pool, http, grpc = oip_case(client, port, grpc_port, repeats)
    finally:
        client.close()
    print(f"{'oip (tritonclient, binary data)':32} {'p50 ms':>8} {'÷ /pool npy':>12}  target  result")
    for name, value in (("/pool npy", pool), ("oip http", http), ("oip grpc", grpc)):
        ratio = value / pool
        verdict = "" if name == "/pool npy" else ("PASS" if ratio <= 1.2 else "MISS")
        print(f"{name:32} {value * 1e3:>8.2f} {ratio:>11.2f}×  {'≤ 1.2×' if verdict else '':6}  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds of wrk per case and server")
    parser.add_argument("--rounds", type=int, default=1, help="times each case runs on each server")
    parser.add_argument("--oip", action="store_true", help="add the Open Inference Protocol rows")
    parser.add_argument("--repeats", type=int, default=40, help="timed requests per --oip case")
    parser.add_argument(
        "--torch-threads",
        type=int,
        help="poolserve's POOLSERVE_TORCH_THREADS (default: unset, torch's default, as for the peers)",
    )
    parser.add_argument("--servers", default=",".join(SERVERS), help="a subset of " + ",".join(SERVERS))
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also serve poolserve at git revision REV (exported to a temporary directory), interleaved "
        "with this checkout in every round, for a before-and-after in one run",
    )
    parser.add_argument(
        "--busy",
        type=int,
        default=0,
        help="processes that spin on a core each for the whole run: a machine that is doing other work, "
        "as a production host usually is (default 0)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print(
            "bench/service.py: skipped: wrk is not installed (`apt-get install wrk`, or `make bench-service`)"
        )
        return
    servers = [s for s in SERVERS if s in args.servers.split(",")]
    if "poolserve" not in servers or "plain" not in servers:
        raise SystemExit("--servers must include poolserve and plain (the targets are against plain)")
    if "litserve" in servers and importlib.util.find_spec("litserve") is None:
        print("litserve is not installed (pip install -e '.[bench]'): its column is left out")
        servers.remove("litserve")
    load_before = os.getloadavg()
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.busy):
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            stack.callback(spinner.wait)
            stack.callback(spinner.kill)
        base, port, grpc_port = stack.enter_context(poolserve(args.torch_threads, grpc=args.oip))
        bases = {"poolserve": base}
        if args.baseline:
            old = export_revision(args.baseline, Path(tmp))
            bases["baseline"] = stack.enter_context(poolserve(args.torch_threads, grpc=False, root=old))[0]
            servers.insert(1, "baseline")
        bases["plain"] = stack.enter_context(plain())
        if "litserve" in servers:
            bases["litserve"] = stack.enter_context(litserve())
        runs, health = measure(bases, args.seconds, args.rounds, Path(tmp))
        if args.oip:
            oip_rows(port, grpc_port, args.repeats)
    load_after = os.getloadavg()
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    print(f"poolserve service benchmark: torch {torch.__version__}, {os.cpu_count()} CPUs, {wrk_version}")
    print(
        f"{args.seconds:g} s per case and server, {args.rounds} round(s), {args.busy} busy process(es); "
        f"poolserve torch threads {args.torch_threads or 'default'} "
        f"(torch's default here: {torch.get_num_threads()})"
        + (f"; baseline: {args.baseline}" if args.baseline else "")
    )
    print(
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min): shared machine, noisy"
    )
    report(runs, health, servers)


if __name__ == "__main__":
    main()
