"""The kserve SDK's REST and gRPC inference clients against a real server, one infer each, compared with
poolcore called directly.

kserve 0.21 does not install beside our pins (it needs pandas < 3 and psutil < 6; gradio runs on pandas 3
here), so it is not in the test extras and this test skips unless kserve is importable. The clients run in
a subprocess (tests/service/kserve_clients.py): kserve's gRPC stubs cannot share a process with
tritonclient's, which tests/service/test_grpc.py imports.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import orjson
import pytest
import torch

from .support import ROOT, free_port, live_server_process, reference

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("kserve") is None, reason="kserve is not installed (it needs pandas < 3)"
)


def test_kserve_clients_infer_over_rest_and_grpc() -> None:
    port = free_port()
    x = np.random.default_rng(5).uniform(0, 1, (1, 3, 8, 8)).astype(np.float32)
    expected = reference(torch.from_numpy(x), "max", {"kernel_size": 2}).numpy()
    with live_server_process({"POOLSERVE_GRPC_PORT": str(port)}) as server:
        run = subprocess.run(
            [sys.executable, "-m", "tests.service.kserve_clients", server.url, f"127.0.0.1:{port}"],
            input=orjson.dumps(x.tolist()),
            capture_output=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
            timeout=120,
            check=False,
        )
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    report = orjson.loads(run.stdout)
    for key in ("rest-False", "rest-True", "grpc"):
        assert report[key]["id"] == key
        np.testing.assert_array_equal(np.asarray(report[key]["output"], np.float32), expected)
    assert report["rest-ready"] and report["grpc-ready"]
