"""The glibc heap thresholds behind ``Settings.reuse_freed_memory``."""

from __future__ import annotations

import platform

import pytest

from service.config import Settings
from service.memory import reuse_freed_memory


def test_on_by_default() -> None:
    assert Settings().reuse_freed_memory is True


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_glibc_accepts_the_thresholds() -> None:
    assert reuse_freed_memory() is True
