"""Settings from the environment, the cached get_settings, and device resolution."""

from __future__ import annotations

import logging

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


# ---- issue 17, finding 8: a blank key list must not turn authentication off -------------------------------
GOOD_KEY = "k" * 16  # the shortest key allowed


@pytest.mark.parametrize("blank", [",", " ", ", ,", " , , "])
def test_a_key_list_without_keys_stops_start_up(monkeypatch: pytest.MonkeyPatch, blank: str) -> None:
    monkeypatch.setenv("POOLSERVE_API_KEYS", blank)
    with pytest.raises(ValidationError, match="POOLSERVE_API_KEYS holds no key") as caught:
        Settings()
    assert "api_keys" in str(caught.value)  # names the setting


@pytest.mark.parametrize("keys", [GOOD_KEY[:-1], f"{GOOD_KEY},short-key-15chr"])
def test_a_key_under_16_characters_stops_start_up(monkeypatch: pytest.MonkeyPatch, keys: str) -> None:
    monkeypatch.setenv("POOLSERVE_API_KEYS", keys)
    with pytest.raises(ValidationError, match="at least 16 characters") as caught:
        Settings()
    for key in keys.split(","):
        assert key not in str(caught.value)  # the message never shows a key


def test_keys_of_16_characters_and_an_empty_value_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POOLSERVE_API_KEYS", f" {GOOD_KEY} , {GOOD_KEY}x ")
    assert Settings().api_key_list == (GOOD_KEY, GOOD_KEY + "x")
    monkeypatch.setenv("POOLSERVE_API_KEYS", "")  # what compose passes for an unset variable: keys off
    assert Settings().api_key_list == ()


def test_trusted_proxy_list() -> None:
    assert Settings().trusted_proxy_list == ()
    assert Settings(trusted_proxies=" 10.0.0.1, ,::1").trusted_proxy_list == ("10.0.0.1", "::1")


@pytest.mark.parametrize("keys", ["", f"{GOOD_KEY},{GOOD_KEY}-two"])
def test_start_up_logs_whether_keys_are_on_never_the_keys(
    keys: str, caplog: pytest.LogCaptureFixture
) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app

    from .support import test_settings

    caplog.set_level(logging.INFO, logger="poolserve")
    with TestClient(create_app(test_settings(api_keys=keys))):
        pass
    lines = [r.getMessage() for r in caplog.records if r.name == "poolserve" and "API keys" in r.getMessage()]
    assert lines == (
        ["API keys on: 2 key(s); every route but the probes needs one"]
        if keys
        else ["API keys off: every route is open (POOLSERVE_API_KEYS is empty)"]
    )
    assert GOOD_KEY not in caplog.text
