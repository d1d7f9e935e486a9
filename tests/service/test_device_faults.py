"""A device fault is not a crash (issue 9): an out-of-memory or other device error inside the operator is a
503 with Retry-After, the CUDA cache is freed, and the next request succeeds. Faults are injected on the
CPU by making the operator raise what torch raises on a GPU."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from poolcore.registry import MethodSpec
from service.app import create_app

from .support import headless_settings

FAULTS: dict[str, Callable[[], BaseException]] = {
    "cuda-oom": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    "accelerator": lambda: torch.AcceleratorError("CUDA error: an illegal memory access was encountered"),
    "cublas": lambda: RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"),
    "cpu-oom": lambda: RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"
    ),
}


@pytest.fixture
def freed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Calls of torch.cuda.empty_cache, with CUDA reported as in use."""
    calls: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(1))
    return calls


def _fail_once(monkeypatch: pytest.MonkeyPatch, fault: Callable[[], BaseException]) -> list[str]:
    """The operator raises ``fault()`` on its first call, then runs as usual."""
    real = MethodSpec.run
    calls: list[str] = []

    def run(self: MethodSpec, x: torch.Tensor, resolved: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(self.name)
        if len(calls) == 1:
            raise fault()
        return real(self, x, resolved, **kwargs)

    monkeypatch.setattr(MethodSpec, "run", run)
    return calls


@pytest.mark.parametrize("fault", FAULTS)
def test_a_device_fault_is_a_503_then_the_next_request_succeeds(
    fault: str, monkeypatch: pytest.MonkeyPatch, freed: list[int]
) -> None:
    body = {"data": [[1.0, 2.0], [3.0, 4.0]], "params": {"kernel_size": 2, "dims": 1}}
    with TestClient(create_app(headless_settings()), raise_server_exceptions=False) as client:
        calls = _fail_once(monkeypatch, FAULTS[fault])
        response = client.post("/pool/max", json=body)
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "1"
        detail = response.json()["detail"]
        assert detail.startswith("the cpu device ") and "retry later" in detail
        assert "alloc_cpu" not in detail and "CUBLAS" not in detail  # nothing internal in the answer
        assert freed == [1]
        again = client.post("/pool/max", json=body)
        assert again.status_code == 200 and again.json()["data"] == [[2.0], [4.0]]
        assert calls == ["max", "max"]


def test_a_plain_bug_is_still_a_500(monkeypatch: pytest.MonkeyPatch, freed: list[int]) -> None:
    with TestClient(create_app(headless_settings()), raise_server_exceptions=False) as client:
        _fail_once(monkeypatch, lambda: RuntimeError("shape '[2, 3]' is invalid for input of size 4"))
        response = client.post(
            "/pool/max", json={"data": [[1.0, 2.0]], "params": {"kernel_size": 1, "dims": 1}}
        )
        assert response.status_code == 500 and "shape" not in response.text
        assert freed == []
