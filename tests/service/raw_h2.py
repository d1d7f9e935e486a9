"""A bare HTTP/2 client over one socket, for what a gRPC client library will not do: open streams past the
server's SETTINGS_MAX_CONCURRENT_STREAMS, and send part of a message and then nothing.

It sends only what the server's flow-control windows allow (so whatever the server buffers, it asked for)
and it reads frames only for their type, flags and stream: enough to know which streams the server ended
(trailers or RST_STREAM) and when it closed the connection. Header blocks it sends are HPACK literals
without indexing; those it receives are not decoded.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Iterable

__all__ = ["RawH2", "grpc_prefix"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_CONCURRENT_STREAMS = 0x4, 0x3
FRAME_LIMIT = 16384  # SETTINGS_MAX_FRAME_SIZE's default


def grpc_prefix(length: int) -> bytes:
    """A gRPC message's 5-byte prefix: not compressed, then the length it announces."""
    return struct.pack(">BI", 0, length)


def _integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def _literal(name: str, value: str) -> bytes:
    """A header as an HPACK literal without indexing, new name, neither string Huffman-coded."""
    raw_name, raw_value = name.encode(), value.encode()
    return b"\x00" + _integer(len(raw_name), 7) + raw_name + _integer(len(raw_value), 7) + raw_value


class RawH2:
    """One HTTP/2 connection to ``host:port`` (prior knowledge, no TLS)."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.authority = f"{host}:{port}"
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""
        self.next_id = 1
        self.connection_window = 65535
        self.initial_window = 65535
        self.windows: dict[int, int] = {}
        self.ended: dict[int, float] = {}  # stream id -> when the server ended it
        self.refused: set[int] = set()  # ended by RST_STREAM REFUSED_STREAM before any answer
        self.max_streams: int | None = None  # as the server advertised it
        self.goaway = False
        self.closed = False
        self.sock.sendall(PREFACE + self._frame(SETTINGS, 0, 0, b""))

    @staticmethod
    def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
        head = struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream)
        return head + payload

    def open_stream(self, path: str, metadata: Iterable[tuple[str, str]] = ()) -> int:
        """A gRPC call's HEADERS on a new stream; returns its id."""
        stream = self.next_id
        self.next_id += 2
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", self.authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *metadata,
        ]
        block = b"".join(_literal(name, value) for name, value in headers)
        self.sock.sendall(self._frame(HEADERS, END_HEADERS, stream, block))
        self.windows[stream] = self.initial_window
        return stream

    def send_some(self, stream: int, data: bytes) -> int:
        """Send as much of ``data`` on ``stream`` as the windows allow now; returns how many bytes went."""
        if stream in self.ended or self.closed:
            return 0
        room = min(len(data), self.connection_window, self.windows.get(stream, 0))
        sent = 0
        frames = []
        while sent < room:
            chunk = data[sent : sent + min(FRAME_LIMIT, room - sent)]
            frames.append(self._frame(DATA, 0, stream, chunk))
            sent += len(chunk)
        if frames:
            try:
                self.sock.sendall(b"".join(frames))
            except OSError:
                self.closed = True
                return 0
            self.connection_window -= sent
            self.windows[stream] -= sent
        return sent

    def pump(self, wait: float) -> bool:
        """Read and handle the frames that arrive within ``wait`` seconds; False once the connection is
        closed."""
        deadline = time.monotonic() + wait
        while not self.closed:
            left = deadline - time.monotonic()
            readable, _, _ = select.select([self.sock], [], [], max(0.0, left))
            if not readable:
                break
            try:
                chunk = self.sock.recv(1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                break
            self._buffer += chunk
            self._handle_frames()
            if left <= 0:
                break
        return not self.closed

    def _handle_frames(self) -> None:
        while len(self._buffer) >= 9:
            length = int.from_bytes(self._buffer[:3], "big")
            if len(self._buffer) < 9 + length:
                return
            kind, flags = self._buffer[3], self._buffer[4]
            stream = int.from_bytes(self._buffer[5:9], "big") & 0x7FFFFFFF
            payload = self._buffer[9 : 9 + length]
            self._buffer = self._buffer[9 + length :]
            now = time.monotonic()
            if kind == SETTINGS and not flags & ACK:
                for i in range(0, len(payload) - 5, 6):
                    key, value = struct.unpack(">HI", payload[i : i + 6])
                    if key == SETTINGS_INITIAL_WINDOW_SIZE:
                        for sid in self.windows:
                            self.windows[sid] += value - self.initial_window
                        self.initial_window = value
                    elif key == SETTINGS_MAX_CONCURRENT_STREAMS:
                        self.max_streams = value
                self.sock.sendall(self._frame(SETTINGS, ACK, 0, b""))
            elif kind == PING and not flags & ACK:
                self.sock.sendall(self._frame(PING, ACK, 0, payload))
            elif kind == WINDOW_UPDATE:
                increment = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                if stream == 0:
                    self.connection_window += increment
                elif stream in self.windows:
                    self.windows[stream] += increment
            elif kind == RST_STREAM:
                if int.from_bytes(payload[:4], "big") == 0x7 and stream not in self.ended:
                    self.refused.add(stream)
                self.ended.setdefault(stream, now)
            elif kind in (HEADERS, CONTINUATION, DATA) and flags & END_STREAM:
                self.ended.setdefault(stream, now)
            elif kind == GOAWAY:
                self.goaway = True
            if kind == DATA and length:
                # Give the window back, so that answers never stall on it.
                update = struct.pack(">I", length)
                self.sock.sendall(self._frame(WINDOW_UPDATE, 0, 0, update))
                if stream not in self.ended:
                    self.sock.sendall(self._frame(WINDOW_UPDATE, 0, stream, update))

    def close(self) -> None:
        self.closed = True
        self.sock.close()
