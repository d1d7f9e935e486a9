"""Where a request's time goes, by layer: py-spy samples of a poolserve server while wrk drives one case of
``bench/service.py``.

    PYTHONPATH=. python bench/profile_service.py [--case 0] [--seconds 6] [--baseline REV]

py-spy (``pip install py-spy``; not a project dependency) samples the thread holding the GIL, the
resource a request's Python work queues for, 250 times a second. Each sample goes to the innermost frame
that belongs to a layer (the table below, first match from the leaf). Native code shows under the Python
line that called it: orjson and numpy under the codec, the socket ``send`` under the write in
``service/server.py``. ``--baseline REV`` profiles that revision too, right after this checkout, for a
before and after. The µs per request are GIL-held time divided by the requests wrk completed, so they
include the profiler's own slowdown: compare shares, and µs only within one run.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench import service as bench

RATE = 250  # samples per second
LAYERS = (  # (layer, pattern on py-spy's "function (file:line)"), the first match from the leaf wins
    ("idle wait (misread as busy)", r"^Condition\.wait|^_worker \(concurrent"),
    ("socket send (kernel)", r"^_HeadHolder\.write \(service/server\.py"),
    ("operator (poolcore, torch)", r"poolcore/|/torch/"),
    ("JSON codec (orjson, numpy)", r"service/codecs/json\.py"),
    ("npy codec", r"service/codecs/npy\.py|numpy/lib/"),
    ("codec dispatch, negotiation", r"service/codecs/"),
    ("limits, finiteness", r"service/limits\.py"),
    ("pooling (answer_jobs, stacking)", r"service/pooling\.py|service/params\.py"),
    ("workers (queue, batching, hop)", r"service/workers\.py|concurrent/futures"),
    ("route handler", r"service/routes/|service/body\.py"),
    (
        "middleware (ids, keys, metrics)",
        r"service/middleware\.py|service/metrics\.py|service/keys\.py",
    ),
    ("protocol (service/server.py)", r"service/server\.py"),
    ("starlette, fastapi", r"starlette/|fastapi/"),
    ("uvicorn, httptools", r"uvicorn/|httptools"),
    ("asyncio, uvloop", r"asyncio/|uvloop"),
    ("threading (wake-ups)", r"threading\.py"),
)


def layer_of(stack: str) -> str:
    for frame in reversed(stack.split(";")):
        for layer, pattern in LAYERS:
            if re.search(pattern, frame):
                return layer
    return "other"


def profile(root: Path, case: bench.Case, seconds: float, workdir: Path) -> None:
    body, content_type, x = case.body()
    script, body_file, samples = workdir / "wrk.lua", workdir / "body", workdir / "samples.txt"
    script.write_text(bench.WRK_SCRIPT)
    body_file.write_bytes(body)
    port = bench._free_port()
    env = bench._env(root, POOLSERVE_DEVICE="cpu")
    cmd = [sys.executable, "-m", "service", "--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(cmd, cwd=root, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/ready", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        url = base + bench._path("poolserve", case)
        bench._check_answer("poolserve", url, body, content_type, x)
        bench.result(bench.wrk(url, case.connections, 2, script, body_file, content_type), "warm-up")
        spy = subprocess.Popen(
            [
                *("py-spy", "record", "--pid", str(server.pid), "--rate", str(RATE), "--format", "raw"),
                *("--output", str(samples), "--duration", str(int(seconds)), "--nonblocking", "--gil"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        run = bench.result(
            bench.wrk(url, case.connections, seconds, script, body_file, content_type), case.name
        )
        spy.wait(60)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    counts: collections.Counter[str] = collections.Counter()
    for line in samples.read_text().splitlines():
        stack, _, hits = line.rpartition(" ")
        counts[layer_of(stack)] += int(hits)
    total = sum(counts.values())
    us_per_sample = 1e6 / RATE / (run.rps * seconds)  # GIL-held µs per request that one sample stands for
    print(f"{case.name}, {root}: {run.rps:.0f} req/s under the profiler, {total} samples")
    for layer, count in counts.most_common():
        print(f"  {layer:42} {100 * count / total:5.1f} %  {count * us_per_sample:8.1f} µs/request")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--case", type=int, default=0, help="index into bench/service.py's CASES (default 0)")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument(
        "--baseline", metavar="REV", help="also profile git revision REV, after this checkout"
    )
    args = parser.parse_args()
    if shutil.which("py-spy") is None or shutil.which("wrk") is None:
        raise SystemExit("bench/profile_service.py needs py-spy (pip install py-spy) and wrk")
    with tempfile.TemporaryDirectory() as tmp:
        roots = [bench.ROOT]
        if args.baseline:
            roots.append(bench.export_revision(args.baseline, Path(tmp)))
        for root in roots:
            profile(root, bench.CASES[args.case], args.seconds, Path(tmp))


if __name__ == "__main__":
    main()
