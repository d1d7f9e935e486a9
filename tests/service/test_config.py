"""Settings from the environment, the cached get_settings, and device resolution."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from service.app import resolve_device
from service.config import Settings, get_settings


def test_defaults() -> None:
    s = Settings()
    assert s.device == "auto"
    assert s.max_body_bytes == 64 * 1024 * 1024
    assert s.max_elements == 2**24
    assert s.opentelemetry is False


def test_environment_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POOLSERVE_DEVICE", "CPU")
    monkeypatch.setenv("POOLSERVE_MAX_BODY_BYTES", "1234")
    monkeypatch.setenv("POOLSERVE_MAX_CONCURRENCY", "7")
    s = Settings()
    assert (s.device, s.max_body_bytes, s.max_concurrency) == ("cpu", 1234, 7)


def test_get_settings_is_cached_and_refreshable(monkeypatch: pytest.MonkeyPatch) -> None:
    get_settings.cache_clear()
    monkeypatch.setenv("POOLSERVE_MAX_ELEMENTS", "99")
    try:
        assert get_settings() is get_settings()
        assert get_settings().max_elements == 99
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize(
    "bad", [{"device": "tpu"}, {"device": "cuda:x"}, {"max_body_bytes": 0}, {"max_concurrency": 0}]
)
def test_invalid_values(bad: dict) -> None:
    with pytest.raises(ValidationError):
        Settings(**bad)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is missing")
def test_cuda_requested_without_cuda() -> None:
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_device_pools_and_returns_cpu() -> None:
    from service.pooling import run_pool

    out = run_pool(torch.ones(1, 2, 4, 4), "avg", {"kernel_size": 2}, device=resolve_device("cuda"))
    assert out.output.device.type == "cpu" and out.device.startswith("cuda")
