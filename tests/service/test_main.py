"""The poolserve console script hands its options to service.server.serve."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from service import __main__ as cli
from service.config import get_settings


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    """main reads the settings afresh; the next test must not get the ones read here."""
    yield
    get_settings.cache_clear()


def test_defaults_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[tuple, dict[str, Any]]] = []
    monkeypatch.setattr(cli, "serve", lambda *a, **k: calls.append((a, k)))
    # Set, then deleted: monkeypatch then restores the environment as it was after the test, although
    # cli.main sets the variable itself.
    monkeypatch.setenv("POOLSERVE_DEVICE", "auto")
    monkeypatch.delenv("POOLSERVE_DEVICE")
    monkeypatch.delenv("POOLSERVE_LOG_LEVEL", raising=False)
    cli.main([])
    assert calls[-1] == (("127.0.0.1", 8000), {"fd": None, "workers": 1, "log_level": "info"})
    cli.main(["--host", "0.0.0.0", "--port", "9001", "--device", "cpu", "--workers", "2", "--fd", "7"])
    assert calls[-1] == (("0.0.0.0", 9001), {"fd": 7, "workers": 2, "log_level": "info"})
    assert os.environ["POOLSERVE_DEVICE"] == "cpu"


def test_bad_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "serve", lambda *a, **k: None)
    with pytest.raises(SystemExit):
        cli.main(["--workers", "0"])


def test_log_level_from_the_environment_or_the_option(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(cli, "serve", lambda *a, **k: calls.append(k))
    monkeypatch.setenv("POOLSERVE_LOG_LEVEL", "Warning")
    cli.main([])
    assert calls[-1]["log_level"] == "warning"
    cli.main(["--log-level", "debug"])
    assert calls[-1]["log_level"] == "debug"


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({"POOLSERVE_LOG_FORMAT": "xml"}, [], "POOLSERVE_LOG_FORMAT: log format must be one of text, json"),
        ({"POOLSERVE_LOG_LEVEL": "loud"}, [], "POOLSERVE_LOG_LEVEL: log level must be one of DEBUG"),
        ({}, ["--log-level", "loud"], "argument --log-level: log level must be one of DEBUG"),
        ({"POOLSERVE_MAX_CONNECTIONS": "0"}, [], "POOLSERVE_MAX_CONNECTIONS: Input should be greater than"),
    ],
)
def test_a_bad_setting_stops_start_up_with_its_name(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    args: list[str],
    message: str,
) -> None:
    monkeypatch.setattr(cli, "serve", lambda *a, **k: pytest.fail("started despite a bad setting"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
