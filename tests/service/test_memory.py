"""The glibc heap thresholds behind ``Settings.reuse_freed_memory``, and the process-wide settings that only
the served app applies (``create_app(configure_process=True)``)."""

from __future__ import annotations

import platform
import threading
from collections.abc import Iterator

import pytest
import torch
from fastapi.testclient import TestClient

import service.app
from service.app import create_app
from service.config import Settings
from service.memory import reuse_freed_memory

from .support import test_settings


def test_on_by_default() -> None:
    assert Settings().reuse_freed_memory is True


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_glibc_accepts_the_thresholds() -> None:
    assert reuse_freed_memory() is True


@pytest.fixture
def mallopt_calls(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """Records the app's calls of reuse_freed_memory (glibc has no way to read the thresholds back)."""
    calls: list[None] = []

    def record() -> bool:
        calls.append(None)
        return True

    monkeypatch.setattr(service.app, "reuse_freed_memory", record)
    return calls


def _new_threads_count() -> int:
    """The torch thread count a thread started now gets: the process-wide default that
    ``torch.set_num_threads`` sets from any thread (the app's lifespan runs in TestClient's own thread)."""
    counts: list[int] = []
    thread = threading.Thread(target=lambda: counts.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return counts[0]


@pytest.fixture
def torch_threads() -> Iterator[int]:
    """The process's torch thread count, restored afterwards."""
    before = _new_threads_count()
    yield before
    torch.set_num_threads(before)


def _start_and_stop(threads: int, **kwargs: bool) -> None:
    settings = test_settings(reuse_freed_memory=True, torch_threads=threads)
    with TestClient(create_app(settings, **kwargs)) as client:
        assert client.get("/ready").status_code == 200


def test_an_app_leaves_glibcs_heap_alone_unless_asked(mallopt_calls: list[None], torch_threads: int) -> None:
    # A test session (or a notebook) that builds an app keeps glibc's thresholds. torch's thread count is
    # not kept: the workers set their share per batch, which also sets the process's default
    # (docs/configuration.md, "Process-wide settings").
    _start_and_stop(torch_threads + 1)
    assert mallopt_calls == []


def test_the_served_app_applies_them_once(mallopt_calls: list[None], torch_threads: int) -> None:
    _start_and_stop(torch_threads + 1, configure_process=True)
    assert len(mallopt_calls) == 1
    assert _new_threads_count() == torch_threads + 1


def test_trim_heap_hands_free_pages_back() -> None:
    """malloc_trim is there on glibc, and a trim after freeing a large heap block does not grow RSS (the
    slow-reader test shows the figure it makes under the raised thresholds)."""
    import ctypes.util

    from service.memory import trim_heap

    if ctypes.util.find_library("c") is None:
        pytest.skip("no C library to trim")
    assert trim_heap() is True
