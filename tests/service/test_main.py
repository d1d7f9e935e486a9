"""The poolserve console script hands its options to service.server.serve."""

from __future__ import annotations

import os
from typing import Any

import pytest

from service import __main__ as cli


def test_defaults_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[tuple, dict[str, Any]]] = []
    monkeypatch.setattr(cli, "serve", lambda *a, **k: calls.append((a, k)))
    monkeypatch.delenv("POOLSERVE_DEVICE", raising=False)
    cli.main([])
    assert calls[-1] == (("127.0.0.1", 8000), {"fd": None, "workers": 1, "log_level": "info"})
    cli.main(["--host", "0.0.0.0", "--port", "9001", "--device", "cpu", "--workers", "2", "--fd", "7"])
    assert calls[-1] == (("0.0.0.0", 9001), {"fd": 7, "workers": 2, "log_level": "info"})
    assert os.environ["POOLSERVE_DEVICE"] == "cpu"


def test_bad_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "serve", lambda *a, **k: None)
    with pytest.raises(SystemExit):
        cli.main(["--workers", "0"])
