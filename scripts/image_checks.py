"""Checks for scripts/test_image.sh that are easier in Python than in shell.

``kserve FILE``  structural check of the KServe InferenceService (kubernetes-validate has no schema for
                 that CRD): kind, custom predictor container, ports (HTTP 8080, gRPC h2c 8001), v2 health
                 probes, GPU limit.
``first-ready URL SECONDS`` polls ``URL/ready`` on loopback every 0.2 s (bounded by SECONDS) and prints the
                 Unix time of the first 200, so the script can time readiness finer than the healthcheck.
``healthy-after`` reads ``docker inspect`` JSON on stdin and prints the seconds from container start to
                 its first passing healthcheck.
``smoke URL``    requests against the running container from the host: a real ``POST /pool/stochastic``
                 with an ``.npy`` body checked against the closed form, a seeded train-mode request checked
                 against the windows it samples from, ``/ready``, ``GET /ui/``, and the Open Inference
                 Protocol's ``/v2/health/ready`` and a binary-data infer checked against the same form.
Exits non-zero with a message naming the failed check.
"""

from __future__ import annotations

import io
import json
import re
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any

__all__ = ["check_kserve", "first_ready", "healthy_after", "main", "smoke", "started_at"]


def _fail(message: str) -> None:
    raise SystemExit(f"FAIL: {message}")


def check_kserve(path: str) -> None:
    import yaml  # from the tools venv (kubernetes-validate depends on PyYAML)

    with open(path, encoding="utf-8") as f:
        doc: dict[str, Any] = yaml.safe_load(f)
    if doc.get("apiVersion") != "serving.kserve.io/v1beta1" or doc.get("kind") != "InferenceService":
        _fail(f"{path}: expected serving.kserve.io/v1beta1 InferenceService, got {doc.get('apiVersion')!r}")
    if not doc.get("metadata", {}).get("name"):
        _fail(f"{path}: metadata.name is missing")
    predictor = doc.get("spec", {}).get("predictor", {})
    containers = predictor.get("containers") or []
    if len(containers) != 1 or containers[0].get("name") != "kserve-container":
        _fail(f"{path}: a custom predictor needs exactly one container named kserve-container")
    c = containers[0]
    if not c.get("image"):
        _fail(f"{path}: the predictor container has no image")
    if c.get("command") != ["poolserve"]:
        _fail(f"{path}: command must be ['poolserve'] (args alone would replace the image's whole CMD)")
    ports = [p.get("containerPort") for p in c.get("ports", [])]
    if ports[:1] != [8080] or "8080" not in c.get("args", []):
        _fail(f"{path}: the predictor must listen on 8080 (ports={ports}, args={c.get('args')})")
    # The Open Inference Protocol's gRPC service: the h2c port, the one POOLSERVE_GRPC_PORT serves on.
    env = {e.get("name"): str(e.get("value")) for e in c.get("env", []) if "value" in e}
    h2c = [p.get("containerPort") for p in c.get("ports", []) if p.get("name") == "h2c"]
    grpc = (env.get("POOLSERVE_GRPC_PORT"), env.get("POOLSERVE_GRPC_HOST"))
    if h2c != [8001] or grpc != ("8001", "0.0.0.0"):
        grpc_env = {k: v for k, v in env.items() if k.startswith("POOLSERVE_GRPC")}
        _fail(f"{path}: gRPC must be served on the h2c port 8001 on 0.0.0.0 (h2c={h2c}, env={grpc_env})")
    probes = {k: c.get(k, {}).get("httpGet", {}).get("path") for k in ("livenessProbe", "readinessProbe")}
    if probes != {"livenessProbe": "/v2/health/live", "readinessProbe": "/v2/health/ready"}:
        _fail(f"{path}: probes must use the v2 health routes, got {probes}")
    if str(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")) != "1":
        _fail(f"{path}: the predictor must limit nvidia.com/gpu to 1")
    name = doc["metadata"]["name"]
    print(f"OK {path}: InferenceService/{name} custom predictor, port 8080, gRPC 8001, v2 probes, 1 GPU")


def _request(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:  # a 4xx/5xx is a check result, not a crash
        return e.code, e.read()


def smoke(base: str) -> None:
    import numpy as np

    status, body = _request(f"{base}/ready")
    ready = json.loads(body)
    print(f"GET /ready -> {status} {ready}")
    if status != 200 or ready.get("status") != "ready" or ready.get("device") != "cpu":
        _fail(f"/ready should say ready on cpu in the CPU variant, got {status} {ready}")

    rng = np.random.default_rng(0)
    x = rng.uniform(0.1, 1.0, size=(1, 2, 6, 6)).astype(np.float32)  # positive: stochastic needs x >= 0
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    npy = {"Content-Type": "application/x-npy", "Accept": "application/x-npy"}

    # Eval mode: Zeiler & Fergus' probability-weighted average, sum(a^2) / sum(a) over each 2x2 window.
    status, body = _request(f"{base}/pool/stochastic?kernel_size=2", buf.getvalue(), npy)
    y = np.load(io.BytesIO(body), allow_pickle=False)
    w = x.reshape(1, 2, 3, 2, 3, 2).transpose(0, 1, 2, 4, 3, 5).reshape(1, 2, 3, 3, 4).astype(np.float64)
    expected = (w**2).sum(-1) / w.sum(-1)
    if status != 200 or y.shape != expected.shape or not np.allclose(y, expected, rtol=1e-5, atol=1e-6):
        _fail(f"POST /pool/stochastic (eval) gave {status} shape {y.shape}, expected {expected.shape}")
    print(f"POST /pool/stochastic?kernel_size=2 (npy, eval) -> {status} {y.shape}, equals sum(a^2)/sum(a)")

    # Train mode, seeded: every output is one of the four values of its own window, and the seed replays.
    url = f"{base}/pool/stochastic?kernel_size=2&mode=train&seed=7"
    status, body = _request(url, buf.getvalue(), npy)
    again = _request(url, buf.getvalue(), npy)[1]
    t = np.load(io.BytesIO(body), allow_pickle=False)
    picked = np.isclose(w, t[..., None].astype(np.float64), rtol=0, atol=0).any(-1)
    if status != 200 or t.shape != expected.shape or not picked.all() or body != again:
        _fail(f"POST /pool/stochastic (train, seed=7) gave {status}: outputs not drawn from their windows")
    print(f"POST /pool/stochastic?kernel_size=2&mode=train&seed=7 -> {status}, samples from windows, replays")

    status, body = _request(f"{base}/ui/")
    if status != 200 or b"gradio" not in body.lower():
        _fail(f"GET /ui/ gave {status} without a Gradio page ({len(body)} bytes)")
    print(f"GET /ui/ -> {status}, Gradio page, {len(body)} bytes")

    # The Open Inference Protocol: KServe's readiness probe, and an infer with binary input data.
    status, body = _request(f"{base}/v2/health/ready")
    if status != 200 or json.loads(body) != {"ready": True}:
        _fail(f"GET /v2/health/ready gave {status} {body[:200]!r}")
    tensor: dict[str, Any] = {"name": "input", "datatype": "FP32", "shape": list(x.shape)}
    tensor["parameters"] = {"binary_data_size": x.nbytes}
    header = json.dumps({"id": "smoke", "inputs": [tensor], "parameters": {"kernel_size": 2}}).encode()
    url = f"{base}/v2/models/stochastic/infer"
    status, body = _request(url, header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))})
    doc = json.loads(body)
    out = doc.get("outputs", [{}])[0]
    y = np.asarray(out.get("data", []), dtype=np.float32).reshape(out.get("shape", [-1]))
    if status != 200 or doc.get("id") != "smoke" or not np.allclose(y, expected, rtol=1e-5, atol=1e-6):
        _fail(f"POST /v2/models/stochastic/infer gave {status} {body[:200]!r}")
    print(f"POST /v2/models/stochastic/infer (binary input) -> {status} {y.shape}, equals sum(a^2)/sum(a)")


def _docker_time(stamp: str) -> datetime:
    """Docker's RFC 3339 stamps carry nanoseconds, which ``fromisoformat`` does not take."""
    m = re.fullmatch(r"(.+T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", stamp)
    if m is None:
        raise ValueError(f"not a docker timestamp: {stamp!r}")
    fraction = (m.group(2) or ".0")[:7].ljust(7, "0")
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.fromisoformat(m.group(1) + fraction + zone)


def healthy_after(inspect_json: str) -> float:
    state = json.loads(inspect_json)[0]["State"]
    passed = [e for e in state["Health"]["Log"] if e["ExitCode"] == 0]
    if not passed:
        _fail("no passing healthcheck in the container's health log")
    return (_docker_time(passed[0]["End"]) - _docker_time(state["StartedAt"])).total_seconds()


def first_ready(base: str, seconds: float) -> float:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/ready", timeout=2) as resp:
                if resp.status == 200:
                    return time.time()
        except (OSError, urllib.error.URLError):
            pass  # not published yet, starting (503) or resetting: keep polling
        time.sleep(0.2)
    _fail(f"{base}/ready never answered 200 within {seconds:.0f} s")
    raise AssertionError  # unreachable: _fail exits


def started_at(inspect_json: str) -> float:
    return _docker_time(json.loads(inspect_json)[0]["State"]["StartedAt"]).timestamp()


def main(argv: list[str]) -> None:
    if argv[:1] == ["kserve"] and len(argv) == 2:
        check_kserve(argv[1])
    elif argv[:1] == ["smoke"] and len(argv) == 2:
        smoke(argv[1].rstrip("/"))
    elif argv == ["healthy-after"]:
        print(f"{healthy_after(sys.stdin.read()):.1f}")
    elif argv == ["started-at"]:
        print(f"{started_at(sys.stdin.read()):.3f}")
    elif argv[:1] == ["first-ready"] and len(argv) == 3:
        print(f"{first_ready(argv[1].rstrip('/'), float(argv[2])):.3f}")
    else:
        raise SystemExit(
            "usage: image_checks.py kserve FILE | smoke BASE_URL | first-ready BASE_URL SECONDS"
            " | healthy-after < inspect.json | started-at < inspect.json"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
