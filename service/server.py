"""The HTTP server around the app: uvicorn, with the connection limits it lacks and a graceful drain.

uvicorn (0.54, httptools) has no limit on a request head's size, no time limit on a request head or body,
and keeps a connection open for as long as a client drips bytes into it. :class:`GuardedHttpToolsProtocol`
adds, per connection:

- a head (request line and headers) larger than ``max_header_bytes`` gets 431 and the connection closes;
- a head that is not complete ``header_timeout`` seconds after the connection opened (or after the
  previous response, once uvicorn's 5 s keep-alive wait has seen a first byte) closes the connection;
- a body that has not fully arrived ``body_timeout`` seconds after its head gets 408 (or, once a response
  has started, the connection just closes);
- a response sent before the request's body was read in full (a 413, say) closes the connection instead
  of waiting for, and discarding, the rest;
- a client that takes no bytes of its response for ``body_timeout`` seconds, while more than the
  transport's high-water mark waits to go out, loses the connection: it is aborted, which drops the
  unsent response at once (a plain close would wait, for ever, to send it);
- at most ``max_connections`` connections are open (the page's event streams included): one more closes
  the connection that has been idle longest (waiting for a head, or for the rest of a body, or kept
  alive between requests), else the oldest event stream, else it is itself refused with 503. So probes
  keep answering while a client holds every connection it can;
- an event stream (``text/event-stream``: the page's heartbeat and queue) lasts at most
  ``ui_session_seconds``, the life of a login to the page, or until ``scope["state"]["session_expires"]``
  (a ``time.time()``) when the app sets it; uvicorn already closes it when its client goes, and it is
  closed at shutdown (it never finishes, so it would hold the shutdown for its whole timeout).

Each connection closed by a limit is a warning naming the peer and the request id, where there is one
(service.logs limits how many are written). :func:`serve` raises the process's file limit (soft to hard)
before it starts: each connection is a file.

Being in the protocol, these hold for every route, the Gradio UI's included, and cost the hot path one
timer per request. They need this protocol: ``poolserve`` uses it, and plain uvicorn gets it with
``--http service.server:GuardedHttpToolsProtocol``.

:class:`DrainingServer` turns SIGTERM into a drain: ``/ready`` answers 503 at once, requests are still
served for ``drain_seconds`` so that load balancers notice, then the listener closes, in-flight requests
finish, and the process exits 0 (uvicorn itself re-raises the signal after shutting down: status 143).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import time
from types import FrameType
from typing import Any, ClassVar

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .config import Settings, get_settings
from .logs import check_level, flush_dropped, log_config
from .memory import trim_heap

__all__ = [
    "DrainingServer",
    "GuardedHttpToolsProtocol",
    "default_max_connections",
    "raise_file_limit",
    "serve",
]

# Seconds after a slow reader's connection is aborted before the freed heap is trimmed.
_TRIM_AFTER = 0.5

log = logging.getLogger("poolserve")

LINGER_SECONDS = 2.0  # how long a refused client may go on sending before its connection closes
_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}
# How often, within body_timeout, a stalled response is looked at: it is closed at most a quarter of the
# timeout late.
_WRITE_CHECKS = 4


def default_max_connections(file_limit: int) -> int:
    """The connection cap when ``POOLSERVE_MAX_CONNECTIONS`` is unset: the file limit ``N`` less a quarter
    of it (at least 64) for everything else that needs a file (gRPC's connections, the page's cache,
    model files, logs), at most 4096, so that heads at their 64 KiB limit stay within 256 MiB; at least 16.
    """
    return max(16, min(4096, file_limit - max(64, file_limit // 4)))


def raise_file_limit() -> int:
    """Raise this process's soft limit on open files (RLIMIT_NOFILE) to its hard limit; the new soft
    limit (the old one where it may not be raised)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as error:
        log.warning("could not raise the file limit from %d to %d: %s", soft, hard, error)
        return soft
    return hard


def _file_limit() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class _HeadTooLarge(Exception):
    """Raised from a parser callback; httptools turns it into a parser error (see send_400_response)."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head-size, head-time and body-time limits (module docstring)."""

    settings: ClassVar[Settings | None] = None  # None: the environment's (POOLSERVE_*)

    @classmethod
    def configured(cls, settings: Settings) -> type[GuardedHttpToolsProtocol]:
        """This protocol with ``settings``' limits rather than the environment's."""
        return type(cls.__name__, (cls,), {"settings": settings})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = self.settings or get_settings()
        self._header_timeout = settings.header_timeout
        self._body_timeout = settings.body_timeout
        self._max_head = settings.max_header_bytes
        self._raw_head = 0  # bytes received since the last complete head, while no body is being read
        self._head = 0  # the current head's size as parsed: request target, header names and values
        self._head_too_large = False
        self._lingering = False  # answered and closing (see _linger)
        self._in_body = False  # between a complete head and the end of its body
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._max_connections = settings.max_connections or default_max_connections(_file_limit())
        self._stream_seconds = settings.ui_session_seconds
        self._since = 0.0  # when the connection last became idle, or its event stream started
        self._stream = False  # answering with an event stream
        self._stream_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._unsent = 0  # bytes waiting to go out when the client last took some
        self._taken_at = 0.0  # when that was

    # -- connection events ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._since = self.loop.time()
        if len(self.connections) > self._max_connections and not self._make_room():
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # answered and closing: the rest is discarded
        if not self._in_body:
            # A head that stays incomplete past the limit is refused at the next read, before httptools
            # buffers more of it; the exact size is checked in the callbacks below.
            if self._raw_head > self._max_head:
                self._head_too_large = True
                self.send_400_response("")
                return
            self._raw_head += len(data)
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        if self._head_too_large:
            log.warning(
                "closed connection from %s: request head over %d bytes (431)",
                self._peer,
                self._max_head,
                extra={"peer": self._peer},
            )
            self._reply_and_close(431, f"the request head is over the limit of {self._max_head} bytes")
            return
        super().send_400_response(msg)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._since = self.loop.time()
        self._stream = False
        if self._stream_timer is not None:
            self._stream_timer.cancel()
            self._stream_timer = None
        if self._in_body:
            # Answered without reading the whole body (a 413 before the body, say): close rather than
            # wait for the rest only to throw it away. The answer said so (see _close_early_answers).
            self._linger()

    # -- parser callbacks -------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head = 0
        self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._grow_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._grow_head(len(name) + len(value) + 4)  # as sent: "name: value\r\n"

    def on_headers_complete(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._raw_head = 0
        self._in_body = True
        self._since = self.loop.time()
        super().on_headers_complete()
        self._body_timer = self.loop.call_later(self._body_timeout, self._body_timed_out)
        if self.cycle is not None:
            self._close_early_answers(self.cycle, self._stream_started)

    def on_message_complete(self) -> None:
        self._in_body = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._unsent, self._taken_at = self.transport.get_write_buffer_size(), self.loop.time()
            self._write_timer = self.loop.call_later(self._body_timeout / _WRITE_CHECKS, self._check_reader)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    @staticmethod
    def _close_early_answers(cycle: Any, on_stream: Any = None) -> None:
        """An answer that starts before its request's body has fully arrived carries ``Connection:
        close`` (the connection closes after it, see on_response_complete), so the client does not send
        its next request on a connection that is about to close. And a response with a Content-Length
        leaves in one write, head and body together (see _HeadHolder). ``on_stream(cycle)`` is called
        when the response is an event stream. The app's task has not started yet: it looks ``cycle.send``
        and ``cycle.transport`` up when it does."""
        send = cycle.send
        holder = cycle.transport = _HeadHolder(cycle.transport)

        async def send_closing_early(message: Any) -> None:
            if message["type"] != "http.response.start":
                try:
                    await send(message)  # the body's first write takes the head along
                finally:
                    holder.flush()  # a HEAD response writes no body
                return
            headers = message.get("headers", [])
            if cycle.more_body:
                headers = [h for h in headers if h[0].lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            # Only a response of known length: a stream's head goes out at once, whenever its body comes.
            if any(name.lower() == b"content-length" for name, _ in headers):
                holder.holding = True
            elif on_stream is not None and any(
                name.lower() == b"content-type" and value.startswith(b"text/event-stream")
                for name, value in headers
            ):
                on_stream(cycle)
            try:
                await send(message)
            finally:
                holder.holding = False

        cycle.send = send_closing_early

    # -- limits -----------------------------------------------------------------------------------
    def _grow_head(self, size: int) -> None:
        self._head += size
        if self._head > self._max_head:
            self._head_too_large = True
            raise _HeadTooLarge

    def _arm_head_timer(self) -> None:
        if self._head_timer is None and not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self._header_timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_body:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_head_timer()  # a pipelined head behind a response still being made: look again later
            return
        if self._raw_head:  # a head dripping in (an idle connection is no news: browsers keep spares)
            log.warning(
                "closed connection from %s: no complete request head within %g s",
                self._peer,
                self._header_timeout,
                extra={"peer": self._peer},
            )
        self.transport.close()  # nothing to answer yet

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if not self._in_body or self.transport.is_closing():
            return
        log.warning(
            "closed connection from %s, request %s: the body did not arrive within %g s (408)",
            self._peer,
            self._request_id,
            self._body_timeout,
            extra={"peer": self._peer, "request_id": self._request_id},
        )
        if self.cycle is not None and not self.cycle.response_started:
            detail = f"the request body did not arrive within {self._body_timeout:g} s"
            self._reply_and_close(408, detail)
        else:
            self.transport.close()

    def _check_reader(self) -> None:
        """While the response waits for the client: abort the connection once it has taken nothing for
        ``body_timeout`` s, which frees what was waiting to go out."""
        self._write_timer = None
        unsent, now = self.transport.get_write_buffer_size(), self.loop.time()
        if unsent == 0:
            return
        if unsent < self._unsent:
            self._unsent, self._taken_at = unsent, now
        elif now - self._taken_at >= self._body_timeout:
            log.warning(
                "closed connection from %s, request %s: the client took no response bytes for %g s "
                "(%d bytes unsent)",
                self._peer,
                self._request_id,
                self._body_timeout,
                unsent,
                extra={"peer": self._peer, "request_id": self._request_id},
            )
            self._abort()
            # The answer is dropped with the transport's buffer; the worker's references go within moments.
            # Then give the freed pages back, off the loop: under the raised heap thresholds
            # (service.memory) they would otherwise stay with the process.
            self.loop.call_later(_TRIM_AFTER, self.loop.run_in_executor, None, trim_heap)
            return
        self._write_timer = self.loop.call_later(self._body_timeout / _WRITE_CHECKS, self._check_reader)

    # -- the connection cap and event streams -----------------------------------------------------
    def _make_room(self) -> bool:
        """At the cap: close the connection idle longest, else the oldest event stream, to admit this
        one; when every other connection is busy, refuse this one with 503. Whether it was admitted."""
        victim, victim_rank, open_now = None, (2, 0.0), 0
        for other in self.connections:
            if not isinstance(other, GuardedHttpToolsProtocol) or other.transport.is_closing():
                continue
            open_now += 1
            rank = other._eviction_rank() if other is not self else None
            if rank is not None and rank < victim_rank:
                victim, victim_rank = other, rank
        if open_now <= self._max_connections:
            return True  # others are closing already
        if victim is not None:
            log.warning(
                "closed connection from %s, request %s, to admit a new one: %d connections open "
                "(POOLSERVE_MAX_CONNECTIONS)",
                victim._peer,
                victim._request_id,
                open_now - 1,
                extra={"peer": victim._peer, "request_id": victim._request_id},
            )
            victim._abort()
            return True
        log.warning(
            "refused connection from %s: %d connections open, none idle (POOLSERVE_MAX_CONNECTIONS)",
            self._peer,
            open_now - 1,
            extra={"peer": self._peer},
        )
        self._reply_and_close(503, f"the server is at its limit of {self._max_connections} connections")
        return False

    def _eviction_rank(self) -> tuple[int, float] | None:
        """(0, since) for an idle connection, (1, since) for an event stream, None for a busy one: a
        request being worked on or an answer going out."""
        cycle = self.cycle
        if self._lingering or self.pipeline:
            return None
        if cycle is None or cycle.response_complete or (self._in_body and not cycle.response_started):
            return (0, self._since)
        if self._stream:
            return (1, self._since)
        return None

    def _stream_started(self, cycle: Any) -> None:
        if cycle is not self.cycle:
            return
        self._stream, self._since = True, self.loop.time()
        seconds = self._stream_seconds
        expires = cycle.scope.get("state", {}).get("session_expires")
        if isinstance(expires, (int, float)):
            seconds = min(seconds, max(0.0, expires - time.time()))
        self._stream_timer = self.loop.call_later(seconds, self._stream_ended)

    def shutdown(self) -> None:
        """The server is shutting down: uvicorn closes idle connections and lets answers finish, but an
        event stream never finishes by itself and would hold the shutdown for its whole timeout."""
        if self._stream and self.cycle is not None and not self.cycle.response_complete:
            self._stream_ended("the server is shutting down")
            return
        super().shutdown()

    def _stream_ended(self, why: str = "its session is over") -> None:
        if self._stream_timer is not None:
            self._stream_timer.cancel()
        self._stream_timer = None
        log.info("closed event stream to %s, request %s: %s", self._peer, self._request_id, why)
        # The app sees a disconnect and stops; what it had sent still goes out first.
        if self.cycle is not None:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()

    @property
    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "-"

    @property
    def _request_id(self) -> str:
        if self.cycle is None:
            return "-"
        return str(self.cycle.scope.get("state", {}).get("request_id", "-"))

    def _abort(self) -> None:
        """Close now, dropping whatever waits to go out; the app sees a disconnect."""
        self._lingering = True
        self._cancel_timers()
        self.transport.abort()

    def _reply_and_close(self, status: int, detail: str) -> None:
        body = orjson.dumps({"detail": detail})
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self._linger()
        if self.cycle is not None:
            # The app sees a disconnect: it stops reading, and uvicorn drops whatever it sends.
            self.cycle.disconnected = True
            self.cycle.message_event.set()

    def _linger(self) -> None:
        """Close after an answer the client may still be sending into: half-close, then discard what
        arrives for a moment. Closing a socket with unread data sends a TCP reset, and the client would
        lose the answer."""
        self._lingering = True
        self._cancel_timers(writes=False)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(min(LINGER_SECONDS, self._header_timeout), self.transport.close)

    def _cancel_timers(self, *, writes: bool = True) -> None:
        """Cancel the limits' timers; with ``writes`` false, all but the slow reader's: a connection
        that is closing still waits for its unsent bytes, for ever unless that timer aborts it."""
        for timer in (self._head_timer, self._body_timer, self._stream_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._stream_timer = None
        if writes and self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None


class _HeadHolder:
    """The transport a response cycle writes to: while ``holding``, the next write (uvicorn's response
    head) is kept back and sent with the write after it (the body), so that a small response leaves in
    one ``send`` and one TCP segment rather than two; on the 2-core benchmark machine the second
    syscall and the client's second wake-up cost about a tenth of a small request."""

    JOIN_LIMIT = 64 * 1024  # larger bodies go in their own write: copying them would cost more

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.holding = False
        self.head: bytes | None = None

    def write(self, data: bytes) -> None:
        if self.holding:
            self.holding, self.head = False, data
            return
        if self.head is not None:
            head, self.head = self.head, None
            if len(data) <= self.JOIN_LIMIT:
                data = head + data
            else:
                self.transport.write(head)
        self.transport.write(data)

    def flush(self) -> None:
        self.holding = False
        if self.head is not None:
            head, self.head = self.head, None
            self.transport.write(head)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, ...: the transport's own
        return getattr(self.transport, name)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain before shutdown on the first SIGTERM/SIGINT (module docstring)."""

    def __init__(self, config: uvicorn.Config, app: Any, drain_seconds: float) -> None:
        super().__init__(config)
        self.app = app
        self.drain_seconds = drain_seconds
        self._drain_until: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_until is not None or self.drain_seconds <= 0:
            super().handle_exit(sig, frame)  # no drain, or a second signal: shut down now
            return
        self.app.state.draining = True  # /ready answers 503 from now on
        self._drain_until = time.monotonic() + self.drain_seconds
        log.info("draining for %g s before shutting down: /ready answers 503", self.drain_seconds)

    async def on_tick(self, counter: int) -> bool:
        if counter % 100 == 0:
            flush_dropped()  # every 10 s (a tick is 0.1 s): the count of a flood that has stopped
        if self._drain_until is not None and time.monotonic() >= self._drain_until:
            self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: Any = None) -> None:
        self.app.state.draining = True
        await super().shutdown(sockets)
        # A shutdown asked for by a signal is the normal end of a server: exit 0, not by the signal.
        self._captured_signals.clear()


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    fd: int | None = None,
    workers: int = 1,
    log_level: str | None = None,
    settings: Settings | None = None,
) -> None:
    """Serve the app ``service.app.create_app`` builds: one process with the drain, or ``workers`` processes
    (no drain), each building its own.
    ``log_level`` overrides ``settings.log_level``; lines are written as :mod:`service.logs` says."""
    settings = settings or get_settings()
    level = check_level(log_level or settings.log_level)
    # Each connection is a file; worker processes inherit the raised limit.
    file_limit = raise_file_limit()
    cap = settings.max_connections or default_max_connections(file_limit)
    if cap > file_limit - 32:
        log.warning(
            "POOLSERVE_MAX_CONNECTIONS=%d leaves little of the file limit (%d) for anything else",
            cap,
            file_limit,
        )
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "fd": fd,
        "log_level": level.lower(),
        "log_config": log_config(level, settings.log_format),
        "timeout_keep_alive": 5,
        # In-flight requests get this long to finish at shutdown: their body and their turn in the queue.
        "timeout_graceful_shutdown": int(settings.body_timeout + settings.request_timeout) + 1,
    }
    if workers > 1:
        # Each process builds its app and its protocol's limits from the environment.
        uvicorn.run(
            "service.app:create_served_app",
            factory=True,
            workers=workers,
            http="service.server:GuardedHttpToolsProtocol",
            **common,
        )
        return
    from .app import create_app

    app = create_app(settings, configure_process=True)

    # uvicorn dups an --fd socket and closes only its copy at shutdown, so the listener would stay open
    # (connections queue unanswered) after the drain: adopt the descriptor itself instead.
    sockets = None if fd is None else [socket.socket(fileno=fd)]
    common["fd"] = None
    config = uvicorn.Config(app, http=GuardedHttpToolsProtocol.configured(settings), **common)
    server = DrainingServer(config, app, settings.drain_seconds)
    server.run(sockets=sockets)
    if not server.started:
        raise SystemExit(3)  # uvicorn's own status for a server that failed to start
