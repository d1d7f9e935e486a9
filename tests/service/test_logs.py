"""Logging (service.logs): the formats, the level, the flood limit with an injected clock, and a real
``poolserve`` start writing its ready line, uvicorn's lines and a limit's warning in one format."""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from service.config import Settings
from service.logs import JsonFormatter, RateLimit, TextFormatter, check_format, check_level, log_config

from .launch import Poolserve, poolserve
from .support import ROOT


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _record(msg: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("poolserve", level, __file__, 1, msg, args, None)


class TestRateLimit:
    def _limit(self, limit: int = 60) -> tuple[RateLimit, Clock, list[logging.LogRecord]]:
        clock, sent = Clock(), list[logging.LogRecord]()
        return RateLimit(limit, 60.0, clock=clock, emit=sent.append), clock, sent

    def test_sixty_a_minute_per_kind_then_one_count(self) -> None:
        rate, clock, sent = self._limit()
        flood = "closed connection from %s: slow"
        passed = [rate.filter(_record(flood, f"10.0.0.{i % 250}:{i}")) for i in range(100)]
        assert passed == [True] * 60 + [False] * 40
        # Another kind has its own budget, and lower levels are never counted.
        assert all(rate.filter(_record("refused key from %s", "10.1.1.1")) for _ in range(60))
        assert not rate.filter(_record("refused key from %s", "10.1.1.1"))
        assert all(rate.filter(_record(flood, "x", level=logging.INFO)) for _ in range(500))
        assert sent == []
        clock.now += 59.9
        assert not rate.filter(_record(flood, "late"))  # still the same minute: dropped (41 now)
        clock.now += 0.1
        # The minute is over: the next line of any kind first sends one count per flooded kind.
        assert rate.filter(_record("something else %s", 1))
        counts = sorted(record.getMessage() for record in sent)
        assert len(counts) == 2
        assert "dropped 1 more warnings like 'refused key from %s'" in counts[0]
        assert "dropped 41 more warnings like 'closed connection from %s: slow'" in counts[1]
        assert all(record.levelno == logging.WARNING for record in sent)
        # A fresh minute: sixty more of the flood pass.
        assert [rate.filter(_record(flood, "y")) for _ in range(61)] == [True] * 60 + [False]

    def test_flush_sends_the_count_without_a_next_line(self) -> None:
        rate, clock, sent = self._limit(limit=2)
        for _ in range(5):
            rate.filter(_record("flood %s", 1))
        rate.flush()
        assert sent == []  # the minute is not over
        clock.now += 60
        rate.flush()
        assert [record.getMessage() for record in sent] == [
            "dropped 3 more warnings like 'flood %s': over 2 in 60 s"
        ]
        rate.flush()
        assert len(sent) == 1  # counted once

    def test_messages_that_are_not_templates_share_one_budget_past_max_kinds(self) -> None:
        rate, _, _ = self._limit(limit=1)
        rate.MAX_KINDS = 3
        assert [rate.filter(_record(f"message {i}")) for i in range(5)] == [True, True, True, True, False]

    def test_bad_arguments(self) -> None:
        with pytest.raises(ValueError, match=r"limit must be at least 1 \(got 0\)"):
            RateLimit(0)
        with pytest.raises(ValueError, match=r"period must be positive \(got -1"):
            RateLimit(1, -1)

    def test_as_a_handler_filter_the_count_goes_through_the_handler(self) -> None:
        clock = Clock()
        lines: list[str] = []

        class Collect(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                lines.append(self.format(record))

        handler = Collect()
        handler.addFilter(RateLimit(3, 60.0, clock=clock, emit=handler.handle))
        logger = logging.getLogger("poolserve.test_logs")
        logger.addHandler(handler)
        logger.propagate = False
        try:
            for i in range(10):
                logger.warning("closed connection from %s", i)
            clock.now += 61
            logger.warning("closed connection from %s", "after")
        finally:
            logger.removeHandler(handler)
            logger.propagate = True
        assert lines == [
            "closed connection from 0",
            "closed connection from 1",
            "closed connection from 2",
            "dropped 7 more warnings like 'closed connection from %s': over 3 in 60 s",
            "closed connection from after",
        ]


class TestFormats:
    def test_text_line(self) -> None:
        record = _record("closed connection from %s, request %s", "127.0.0.1:5000", "abc")
        line = TextFormatter().format(record)
        pattern = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARNING poolserve: closed connection from "
        assert re.fullmatch(pattern + r"127\.0\.0\.1:5000, request abc", line)

    def test_json_line_with_extras_and_traceback(self) -> None:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            record = logging.LogRecord(
                "poolserve", logging.ERROR, __file__, 1, "failed %s", ("x",), sys.exc_info()
            )
        record.peer = "10.0.0.1:4000"
        record.request_id = "r-1"
        line = JsonFormatter().format(record)
        assert "\n" not in line
        fields = json.loads(line)
        assert fields["level"] == "ERROR" and fields["logger"] == "poolserve"
        assert fields["message"] == "failed x"
        assert (fields["peer"], fields["request_id"]) == ("10.0.0.1:4000", "r-1")
        assert "RuntimeError: boom" in fields["exc_info"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", fields["time"])

    @pytest.mark.parametrize(
        ("value", "name"), [("info", "INFO"), (" Warning ", "WARNING"), ("DEBUG", "DEBUG")]
    )
    def test_level_names(self, value: str, name: str) -> None:
        assert check_level(value) == name
        assert Settings(log_level=value).log_level == name

    @pytest.mark.parametrize("value", ["loud", "", "warn", "10"])
    def test_bad_level(self, value: str) -> None:
        with pytest.raises(
            ValueError,
            match=f"log level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL \\(got {value!r}\\)",
        ):
            check_level(value)
        with pytest.raises(ValidationError, match="log level must be one of"):
            Settings(log_level=value)

    def test_formats(self) -> None:
        assert check_format("JSON") == "json" and Settings(log_format="text").log_format == "text"
        with pytest.raises(ValidationError, match=r"log format must be one of text, json \(got 'xml'\)"):
            Settings(log_format="xml")


_APPLY = """
import logging, logging.config, sys
from service.logs import log_config
logging.config.dictConfig(log_config(sys.argv[1], sys.argv[2]))
logging.getLogger("poolserve").debug("debug line %s", 1)
logging.getLogger("poolserve").info("info line %s", 2)
logging.getLogger("poolserve.ui").warning("warning line %s", 3)
logging.getLogger("uvicorn.error").info("uvicorn line %s", 4)
logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", "/x", "1.1", 200)
logging.getLogger("gradio").info("a library's info line")
logging.getLogger("gradio").warning("a library's warning line")
for i in range(70):
    logging.getLogger("poolserve").warning("flood %s", i)
"""


def _apply(level: str, log_format: str) -> tuple[list[str], list[str]]:
    """The lines a process writes to stdout and stderr under ``log_config(level, log_format)``."""
    done = subprocess.run(
        [sys.executable, "-c", _APPLY, level, log_format],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.splitlines(), done.stderr.splitlines()


class TestSetUp:
    def test_json_at_info(self) -> None:
        out, err = _apply("INFO", "json")
        stdout = [json.loads(line) for line in out]
        stderr = [json.loads(line) for line in err]  # every line is one JSON object
        assert [(r["logger"], r["message"]) for r in stdout] == [
            ("uvicorn.access", '127.0.0.1:1 - "GET /x HTTP/1.1" 200')
        ]
        messages = [(r["logger"], r["level"], r["message"]) for r in stderr]
        assert messages[:4] == [
            ("poolserve", "INFO", "info line 2"),
            ("poolserve.ui", "WARNING", "warning line 3"),
            ("uvicorn.error", "INFO", "uvicorn line 4"),
            ("gradio", "WARNING", "a library's warning line"),
        ]
        # The flood: 60 of 70 written (the count follows once the minute is over).
        assert [m for _, _, m in messages[4:]] == [f"flood {i}" for i in range(60)]

    def test_text_at_warning(self) -> None:
        out, err = _apply("warning", "text")
        assert out == []  # the access log is at INFO
        assert len(err) == 62
        assert re.fullmatch(r"\S+Z WARNING poolserve\.ui: warning line 3", err[0])
        assert re.fullmatch(r"\S+Z WARNING gradio: a library's warning line", err[1])

    def test_debug(self) -> None:
        _, err = _apply("DEBUG", "text")
        assert err[0].endswith("DEBUG poolserve: debug line 1")

    def test_config_refuses_bad_names(self) -> None:
        with pytest.raises(ValueError, match="got 'xml'"):
            log_config("INFO", "xml")


@pytest.fixture(scope="module")
def json_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Poolserve]:
    tmp = tmp_path_factory.mktemp("poolserve")
    env = {
        "POOLSERVE_LOG_FORMAT": "json",
        "POOLSERVE_LOG_LEVEL": "info",
        "POOLSERVE_MAX_HEADER_BYTES": "4096",
    }
    with poolserve(tmp, env) as server:
        yield server


def _json_lines(server: Poolserve, stream: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in server.lines(stream)]


def test_a_real_start_writes_its_ready_line_in_json(json_server: Poolserve) -> None:
    httpx.get(f"{json_server.url}/health", trust_env=False)
    messages = [str(r["message"]) for r in _json_lines(json_server, "stderr")]
    assert any(m.startswith("poolserve ready on cpu") for m in messages), messages
    assert any(m.startswith("Application startup complete") for m in messages)  # uvicorn's, same format
    access = [str(r["message"]) for r in _json_lines(json_server, "stdout")]
    assert any('"GET /health HTTP/1.1" 200' in m for m in access)


def test_a_connection_closed_by_a_limit_is_a_warning_naming_its_peer(json_server: Poolserve) -> None:
    with socket.create_connection(("127.0.0.1", json_server.port), timeout=30) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 5000 + b"\r\n\r\n")
        host, port = sock.getsockname()
        peer = f"{host}:{port}"
        assert sock.recv(100).startswith(b"HTTP/1.1 431")
    for _ in range(50):  # the line is written after the answer
        warnings = [r for r in _json_lines(json_server, "stderr") if r["level"] == "WARNING"]
        if any(peer in str(r["message"]) for r in warnings):
            break
        time.sleep(0.1)
    line = next(r for r in warnings if peer in str(r["message"]))
    assert "431" in str(line["message"]) and line["peer"] == peer and line["logger"] == "poolserve"


def test_a_bad_log_format_stops_start_up_with_a_clear_message(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service", "--port", "0"],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "", "POOLSERVE_LOG_FORMAT": "yaml"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "POOLSERVE_LOG_FORMAT: log format must be one of text, json (got 'yaml')" in done.stderr
    assert "Traceback" not in done.stderr
