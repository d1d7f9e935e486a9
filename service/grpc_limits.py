"""The parts of the gRPC service's limits that need no protobuf stubs (so tests can import them beside
other OIP stubs, which claim the same message names): the room for messages still arriving, and the
client address in a grpc peer name."""

from __future__ import annotations

import asyncio
from collections import deque
from urllib.parse import unquote

__all__ = ["ArrivalRoom", "peer_host"]


def peer_host(peer: str | None) -> str | None:
    """The address in a grpc peer name: ``ipv4:127.0.0.1:5000`` gives ``127.0.0.1``, ``ipv6:[::1]:5000``
    (brackets possibly percent-encoded) gives ``::1``; any other kind (``unix:...``) is kept whole."""
    if not peer:
        return None
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return peer
    host = unquote(rest).rpartition(":")[0]
    return host.strip("[]") or None


class ArrivalRoom:
    """Bytes reserved, across every connection, for messages still arriving.

    grpc core buffers a message until it is whole and tells nothing of its size before that, so a read
    reserves the most a message may be. A call that finds no room waits its turn (first come, first
    served); its caller bounds the wait. Used only on the event loop.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def reserve(self, size: int) -> None:
        """Wait until ``size`` bytes are free and take them; cancelling the wait takes nothing."""
        if not self._waiting and self.used + size <= self.capacity:
            self.used += size
            return
        entry = (size, asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        try:
            await entry[1]
        except asyncio.CancelledError:
            if entry[1].cancelled():
                # Given up before its turn (its future is cancelled with the waiting task): never granted.
                if entry in self._waiting:
                    self._waiting.remove(entry)
                self._grant()
            else:
                self.release(size)  # granted just as the wait was given up
            raise

    def release(self, size: int) -> None:
        self.used -= size
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self.used + self._waiting[0][0] <= self.capacity:
            size, turn = self._waiting.popleft()
            if not turn.cancelled():  # a waiter that gave up is cancelled before its clean-up runs
                self.used += size
                turn.set_result(None)
