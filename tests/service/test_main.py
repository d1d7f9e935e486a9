"""The poolserve console script hands its options to uvicorn."""

from __future__ import annotations

from typing import Any

import pytest

from service import __main__ as cli


def test_defaults_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[tuple, dict[str, Any]]] = []
    monkeypatch.setattr(cli.uvicorn, "run", lambda *a, **k: calls.append((a, k)))
    monkeypatch.delenv("POOLSERVE_DEVICE", raising=False)
    cli.main([])
    assert calls[-1] == (
        ("service.app:app",),
        {"host": "127.0.0.1", "port": 8000, "workers": 1, "log_level": "info"},
    )
    cli.main(["--host", "0.0.0.0", "--port", "9001", "--device", "cpu", "--workers", "2"])
    assert calls[-1][1] == {"host": "0.0.0.0", "port": 9001, "workers": 2, "log_level": "info"}
    import os

    assert os.environ["POOLSERVE_DEVICE"] == "cpu"


def test_bad_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.uvicorn, "run", lambda *a, **k: None)
    with pytest.raises(SystemExit):
        cli.main(["--workers", "0"])
