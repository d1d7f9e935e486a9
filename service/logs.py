"""One logging set-up for poolserve's lines and uvicorn's: one format, one level, one flood limit.

``poolserve`` (and ``python -m service``) hands :func:`log_config` to uvicorn, which applies it with
:func:`logging.config.dictConfig` in every process it runs. Every line but the access log goes to stderr
through the root logger's handler, in ``POOLSERVE_LOG_FORMAT`` (``text``: one readable line; ``json``: one
JSON object a line), at ``POOLSERVE_LOG_LEVEL`` for poolserve's and uvicorn's loggers (other libraries:
warnings and worse). uvicorn's access log, one line per request, keeps its own stream, stdout, in the
same format.

A client can make the server warn once per request (a refused key, a connection closed by a limit), so
the handler carries a :class:`RateLimit`: at most 60 warnings a minute per kind (the record's message
template), then one line counting those dropped, so that a flood cannot fill the disk.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "FORMATS",
    "LEVELS",
    "JsonFormatter",
    "RateLimit",
    "TextFormatter",
    "check_format",
    "check_level",
    "flush_dropped",
    "log_config",
    "stream_handler",
]

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")
# Attributes every LogRecord has; anything else on a record came from ``extra=`` and goes into JSON lines.
# uvicorn's color_message is its message with terminal colours: not for a log file.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}


def check_level(value: str) -> str:
    """``value`` as a level name (``INFO``); ValueError naming it when it is not one of :data:`LEVELS`."""
    name = str(value).strip().upper()
    if name not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)} (got {value!r})")
    return name


def check_format(value: str) -> str:
    """``value`` as a format name; ValueError naming it when it is not one of :data:`FORMATS`."""
    name = str(value).strip().lower()
    if name not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)} (got {value!r})")
    return name


def _utc_time(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """``2026-01-02T03:04:05.678Z WARNING poolserve: message``, then the traceback, if any."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _utc_time(record)

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the record's extras, and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _utc_time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in line:
                line[key] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        # default=str: an extra that is not JSON (an address tuple, an exception) is written as text.
        return orjson.dumps(line, default=str).decode()


@dataclass
class _Window:
    start: float
    passed: int = 0
    dropped: int = 0


_DROPPED = "dropped %d more warnings like %r: over %d in %g s"
_OTHER = "(other messages)"  # the kind of records once MAX_KINDS kinds are being counted


class RateLimit(logging.Filter):
    """Lets at most ``limit`` records at WARNING or above of one kind (``record.msg``, the message
    template, so the same warning about different clients is one kind) through per ``period`` seconds.
    The rest are dropped and counted; once the period is over, the count goes out as one warning, through
    ``emit`` (the handler's ``handle``), before the next line any caller logs, or at :func:`flush_dropped`.
    Lower levels always pass. ``clock`` is injectable for tests."""

    MAX_KINDS = 1024  # kinds counted at once: messages that are not templates would otherwise each be one

    def __init__(
        self,
        limit: int = 60,
        period: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        emit: Callable[[logging.LogRecord], object] | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1 (got {limit})")
        if period <= 0:
            raise ValueError(f"period must be positive (got {period})")
        super().__init__()
        self.limit = limit
        self.period = period
        self.clock = clock
        self.emit = emit
        self._windows: dict[str, _Window] = {}
        self._next_end = float("inf")  # when the earliest window ends
        self._lock = threading.Lock()
        _LIMITS.add(self)

    def filter(self, record: logging.LogRecord) -> bool:
        now = self.clock()
        summaries = self._ended(now) if now >= self._next_end else []
        passed = True
        if record.levelno >= logging.WARNING:
            with self._lock:
                kind = str(record.msg)
                if kind not in self._windows and len(self._windows) >= self.MAX_KINDS:
                    kind = _OTHER
                window = self._windows.get(kind)
                if window is None:
                    window = self._windows[kind] = _Window(now)
                    self._next_end = min(self._next_end, now + self.period)
                if window.passed < self.limit:
                    window.passed += 1
                else:
                    window.dropped += 1
                    passed = False
        for summary in summaries:
            self._send(summary)
        return passed

    def flush(self) -> None:
        """Send the counts of the windows that are over now, without waiting for the next line."""
        for summary in self._ended(self.clock()):
            self._send(summary)

    def _ended(self, now: float) -> list[logging.LogRecord]:
        """Forget the windows that are over; a summary record for each that dropped lines."""
        summaries = []
        with self._lock:
            for kind, window in list(self._windows.items()):
                if now >= window.start + self.period:
                    del self._windows[kind]
                    if window.dropped:
                        summaries.append(
                            logging.LogRecord(
                                "poolserve",
                                logging.WARNING,
                                __file__,
                                0,
                                _DROPPED,
                                (window.dropped, kind, self.limit, self.period),
                                None,
                            )
                        )
            ends = [w.start + self.period for w in self._windows.values()]
            self._next_end = min(ends, default=float("inf"))
        return summaries

    def _send(self, record: logging.LogRecord) -> None:
        if self.emit is not None:
            self.emit(record)


_LIMITS: weakref.WeakSet[RateLimit] = weakref.WeakSet()


def flush_dropped() -> None:
    """Every :class:`RateLimit`'s :meth:`~RateLimit.flush`: the server calls it now and then, so that the
    count of a flood that stopped is written even if nothing else is logged after it."""
    for limit in list(_LIMITS):
        limit.flush()


def stream_handler(
    stream: str = "stderr", log_format: str = "text", rate_limited: bool = True
) -> logging.Handler:
    """A handler writing to ``sys.stderr`` or ``sys.stdout`` in ``log_format``, with a :class:`RateLimit`
    unless ``rate_limited`` is false (the access log: one line per request, by design)."""
    if stream not in ("stderr", "stdout"):
        raise ValueError(f"stream must be stderr or stdout (got {stream!r})")
    handler = logging.StreamHandler(getattr(sys, stream))
    handler.setFormatter(JsonFormatter() if check_format(log_format) == "json" else TextFormatter())
    if rate_limited:
        handler.addFilter(RateLimit(emit=handler.handle))
    return handler


def log_config(level: str = "INFO", log_format: str = "text") -> dict[str, Any]:
    """The :func:`logging.config.dictConfig` set-up described in the module docstring, for uvicorn's
    ``log_config`` (uvicorn applies it in each worker process)."""
    level, log_format = check_level(level), check_format(log_format)
    handler = "service.logs.stream_handler"
    return {
        "version": 1,
        "disable_existing_loggers": False,  # poolserve's modules hold their loggers from import on
        "handlers": {
            "default": {"()": handler, "stream": "stderr", "log_format": log_format},
            "access": {"()": handler, "stream": "stdout", "log_format": log_format, "rate_limited": False},
        },
        # Other libraries' lines: warnings and worse, through the same handler.
        "root": {"handlers": ["default"], "level": "WARNING"},
        "loggers": {
            "poolserve": {"level": level},
            "uvicorn": {"level": level},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["access"], "level": level, "propagate": False},
        },
    }
