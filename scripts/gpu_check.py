"""The GPU check in one command (``make gpu-check``): everything that needs a CUDA device, in one report.

    python scripts/gpu_check.py [--report test-artifacts/gpu-check.md] [--steps tests,ops,service,bench]

Steps, each under its own time limit and all together within 10 minutes on one GPU:

1. ``tests``: the CUDA tests (``pytest -m cuda``);
2. ``ops``: the operator benchmark, ``bench/ops.py --device cuda``;
3. ``service``: the service started with ``--device cuda`` on a free loopback port, one request per method
   and wire format (JSON, .npy, PNG, multipart), each answer checked against poolcore on the CPU and its
   ``X-Pool-Device`` header against the device;
4. ``bench``: the service benchmark (``bench/service.py``, poolserve and the plain endpoint) with poolserve
   on the GPU; its npy rows are the GPU case (it needs ``wrk``, and says so when that is missing).

Every step's outcome and the tail of its output go into one Markdown report. With no CUDA device the
script says so, writes that in the report and exits 0; otherwise it exits 1 if a step failed.
``--device cpu`` runs the same steps on the CPU (a dry run of the script itself).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

TOTAL_S = 570.0  # the whole check stays within 10 minutes, start-up included
STEPS = ("tests", "ops", "service", "bench")
BUDGET_S = {"tests": 180.0, "ops": 120.0, "service": 150.0, "bench": 120.0}
FORMATS = ("json", "npy", "png", "multipart")


@dataclass
class Outcome:
    step: str
    ok: bool
    seconds: float
    summary: str
    output: str = ""


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_command(step: str, command: Sequence[str], timeout: float, env: dict[str, str]) -> Outcome:
    start = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as error:
        out = (error.stdout or b"").decode() if isinstance(error.stdout, bytes) else (error.stdout or "")
        return Outcome(step, False, time.monotonic() - start, f"timed out after {timeout:.0f} s", _tail(out))
    output = done.stdout + done.stderr
    ok = done.returncode == 0 or (step == "tests" and done.returncode == 5)  # 5: nothing collected
    summary = f"exit {done.returncode}: " + (_tail(done.stdout, 1) or "no output")
    return Outcome(step, ok, time.monotonic() - start, summary, _tail(output))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _params(method: str) -> dict[str, Any]:
    if method.startswith("global_"):
        return {}
    if method.startswith("adaptive_"):
        return {"output_size": 3}
    return {"kernel_size": 2}


def _request(wire: str, x: Any, params: dict[str, Any]) -> dict[str, Any]:
    """httpx.post's arguments for one method in one wire format."""
    import numpy as np
    from PIL import Image

    array = np.asarray(x)
    query = {k: str(v) for k, v in params.items()}
    if wire == "json":
        return {"json": {"data": array.tolist(), "params": params}}
    buffer = io.BytesIO()
    if wire == "png":
        Image.fromarray(array[0, 0].astype(np.uint8), mode="L").save(buffer, format="PNG")
        # The service reads a PNG as C x H x W in [0, 1]; npy back keeps the floats exact.
        headers = {"content-type": "image/png", "accept": "application/x-npy"}
        return {"content": buffer.getvalue(), "params": query, "headers": headers}
    np.save(buffer, array, allow_pickle=False)
    if wire == "npy":
        return {
            "content": buffer.getvalue(),
            "params": query,
            "headers": {"content-type": "application/x-npy"},
        }
    return {"files": {"file": ("x.npy", buffer.getvalue(), "application/x-npy")}, "data": query}


def check_service(device: str, timeout: float, env: dict[str, str]) -> Outcome:
    """The service on ``device``: one request per method and format, each answer against poolcore on CPU."""
    import httpx
    import numpy as np
    import torch

    import poolcore

    start = time.monotonic()
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "service",
        "--port",
        str(port),
        "--device",
        device,
        "--log-level",
        "warning",
    ]
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed below, after the server stops); a file, not a pipe: a full pipe would stall the server
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    lines: list[str] = []
    failures: list[str] = []
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=30, trust_env=False) as client:
            while True:  # wait for /ready
                if server.poll() is not None or time.monotonic() - start > timeout:
                    log.seek(0)
                    out = _tail(log.read().decode(errors="replace"))
                    return Outcome("service", False, time.monotonic() - start, "did not become ready", out)
                try:
                    if client.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            # Whole numbers 0..255, so the PNG carries exactly the same input as the other formats.
            x = torch.randint(0, 256, (1, 1, 12, 12), generator=torch.Generator().manual_seed(0)).float()
            for method in poolcore.methods():
                params = _params(method)
                for wire in FORMATS:
                    expected = poolcore.pool(x / 255.0 if wire == "png" else x, method, **params)
                    r = client.post(f"/pool/{method}", **_request(wire, x.numpy(), params))
                    where = r.headers.get("x-pool-device", "?")
                    if r.status_code != 200:
                        failures.append(f"{method} {wire}: HTTP {r.status_code} {r.text[:200]}")
                        continue
                    if wire == "json":
                        got = torch.tensor(r.json()["data"], dtype=torch.float32)
                    else:
                        got = torch.from_numpy(np.load(io.BytesIO(r.content), allow_pickle=False)).float()
                    if wire == "png":  # an image comes back without the batch dimension
                        got = got.reshape(expected.shape) if got.numel() == expected.numel() else got
                    close = got.shape == expected.shape and torch.allclose(
                        got, expected, rtol=1e-4, atol=1e-3
                    )
                    on_device = where.split(":")[0] == device.split(":")[0]
                    lines.append(f"{method:13s} {wire:9s} {r.status_code} device={where} matches_cpu={close}")
                    if not close or not on_device:
                        failures.append(f"{method} {wire}: device {where}, matches the CPU answer: {close}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    n = len(poolcore.methods()) * len(FORMATS)
    summary = f"{n - len(failures)} of {n} requests answered on {device} and matched" + (
        f"; failures: {'; '.join(failures)}" if failures else ""
    )
    return Outcome("service", not failures, time.monotonic() - start, summary, "\n".join(lines))


def write_report(path: Path, header: str, outcomes: Sequence[Outcome]) -> None:
    parts = [f"# GPU check\n\n{header}\n", "| step | result | seconds | summary |", "|---|---|---|---|"]
    for o in outcomes:
        summary = o.summary.replace("|", "\\|").replace("\n", " ")
        parts.append(f"| {o.step} | {'ok' if o.ok else 'FAILED'} | {o.seconds:.0f} | {summary} |")
    for o in outcomes:
        parts.append(f"\n## {o.step}\n\n```\n{o.output}\n```")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--report", type=Path, default=ROOT / "test-artifacts" / "gpu-check.md")
    parser.add_argument("--steps", default=",".join(STEPS), help="a subset of " + ",".join(STEPS))
    parser.add_argument(
        "--step-seconds",
        type=float,
        help="one limit per step, no overall one (slow machines)",
    )
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a dry run")
    args = parser.parse_args(argv)
    steps = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        parser.error(f"--steps: unknown {', '.join(unknown)} (known: {', '.join(STEPS)})")

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        message = "gpu-check: no CUDA device on this machine: nothing to check (exit 0)"
        write_report(args.report, message, [])
        print(message)
        print(f"report: {args.report}")
        return 0
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU (dry run)"
    header = (
        f"device {args.device}: {name}; torch {torch.__version__}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average {os.getloadavg()[0]:.1f}"
    )
    print(header, flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False"}
    deadline = time.monotonic() + (math.inf if args.step_seconds else TOTAL_S)
    outcomes: list[Outcome] = []
    for step in steps:
        timeout = args.step_seconds or max(10.0, min(BUDGET_S[step], deadline - time.monotonic()))
        print(f"gpu-check: {step} (at most {timeout:.0f} s) ...", flush=True)
        if step == "tests":
            command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests"]
            outcome = run_command(step, command, timeout, env)
        elif step == "ops":
            command = [sys.executable, "bench/ops.py", "--device", args.device]
            outcome = run_command(step, command, timeout, env)
        elif step == "service":
            started = time.monotonic()
            try:
                outcome = check_service(args.device, timeout, env)
            except Exception as error:  # a broken step is reported, and the next still runs
                summary = f"{type(error).__name__}: {error}"
                outcome = Outcome(step, False, time.monotonic() - started, summary, traceback.format_exc())
        else:
            command = [sys.executable, "bench/service.py", "--servers", "poolserve,plain", "--seconds", "5"]
            outcome = run_command(step, command, timeout, {**env, "POOLSERVE_DEVICE": args.device})
        outcomes.append(outcome)
        print(f"gpu-check: {step}: {'ok' if outcome.ok else 'FAILED'} ({outcome.summary})", flush=True)
    write_report(args.report, header, outcomes)
    print(f"report: {args.report}")
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
