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
  of waiting for, and discarding, the rest.

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
import socket
import time
from types import FrameType
from typing import Any, ClassVar

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .config import Settings, get_settings

__all__ = ["DrainingServer", "GuardedHttpToolsProtocol", "serve"]

log = logging.getLogger("poolserve")

LINGER_SECONDS = 2.0  # how long a refused client may go on sending before its connection closes
_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


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

    # -- connection events ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
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
            self._reply_and_close(431, f"the request head is over the limit of {self._max_head} bytes")
            return
        super().send_400_response(msg)

    def on_response_complete(self) -> None:
        super().on_response_complete()
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
        super().on_headers_complete()
        self._body_timer = self.loop.call_later(self._body_timeout, self._body_timed_out)
        if self.cycle is not None:
            self._close_early_answers(self.cycle)

    def on_message_complete(self) -> None:
        self._in_body = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    @staticmethod
    def _close_early_answers(cycle: Any) -> None:
        """An answer that starts before its request's body has fully arrived carries ``Connection:
        close`` (the connection closes after it, see on_response_complete), so the client does not send
        its next request on a connection that is about to close. And a response with a Content-Length
        leaves in one write, head and body together (see _HeadHolder). The app's task has not started
        yet: it looks ``cycle.send`` and ``cycle.transport`` up when it does."""
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
        self.transport.close()  # an idle connection, or a head dripping in: nothing to answer yet

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if not self._in_body or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_started:
            detail = f"the request body did not arrive within {self._body_timeout:g} s"
            self._reply_and_close(408, detail)
        else:
            self.transport.close()

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
        log.info("connection from %s closed: %s (%d)", self.client, detail, status)

    def _linger(self) -> None:
        """Close after an answer the client may still be sending into: half-close, then discard what
        arrives for a moment. Closing a socket with unread data sends a TCP reset, and the client would
        lose the answer."""
        self._lingering = True
        self._cancel_timers()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(min(LINGER_SECONDS, self._header_timeout), self.transport.close)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None


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
    log_level: str = "info",
    settings: Settings | None = None,
) -> None:
    """Serve ``service.app:app``: one process with the drain, or ``workers`` processes (no drain)."""
    settings = settings or get_settings()
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "fd": fd,
        "log_level": log_level,
        "timeout_keep_alive": 5,
        # In-flight requests get this long to finish at shutdown: their body and their turn in the queue.
        "timeout_graceful_shutdown": int(settings.body_timeout + settings.request_timeout) + 1,
    }
    if workers > 1:
        # Each process builds its app and its protocol's limits from the environment.
        uvicorn.run(
            "service.app:app", workers=workers, http="service.server:GuardedHttpToolsProtocol", **common
        )
        return
    from .app import app

    # uvicorn dups an --fd socket and closes only its copy at shutdown, so the listener would stay open
    # (connections queue unanswered) after the drain: adopt the descriptor itself instead.
    sockets = None if fd is None else [socket.socket(fileno=fd)]
    common["fd"] = None
    config = uvicorn.Config(app, http=GuardedHttpToolsProtocol.configured(settings), **common)
    server = DrainingServer(config, app, settings.drain_seconds)
    server.run(sockets=sockets)
    if not server.started:
        raise SystemExit(3)  # uvicorn's own status for a server that failed to start
