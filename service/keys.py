"""The one API-key check, for every protocol (HTTP, the page's login, gRPC), and the throttle on guessing.

- :func:`key_problem` says why a credential is not one of the keys, or None when it is. Every key is
  compared in constant time, whatever the first comparisons gave.
- :class:`AuthThrottle` counts wrong keys per client address: after ``max_failures`` within ``window``
  seconds, that address is refused for ``lockout`` seconds (HTTP 429 / gRPC RESOURCE_EXHAUSTED, with
  ``Retry-After``), even with a right key, so that a guesser learns nothing from the answers. A missing key
  does not count: it is a mistake, not a guess.
- :func:`client_address` is the peer address, or the ``X-Forwarded-For`` client when the peer is a trusted
  proxy.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["AuthThrottle", "KeyProblem", "client_address", "encode_keys", "key_problem"]

REALM = 'Bearer realm="poolserve"'


@dataclass(frozen=True)
class KeyProblem:
    """Why a request carries no valid key: the message, the WWW-Authenticate challenge, and whether it
    counts as a guess (a wrong key does; a missing or malformed header does not)."""

    detail: str
    challenge: str
    wrong_key: bool


MISSING = KeyProblem("this route needs an API key: send Authorization: Bearer <key>", REALM, wrong_key=False)
MALFORMED = KeyProblem(
    "the Authorization header must be Bearer <key>", REALM + ', error="invalid_request"', wrong_key=False
)
WRONG = KeyProblem("invalid API key", REALM + ', error="invalid_token"', wrong_key=True)


def encode_keys(keys: Iterable[str]) -> tuple[bytes, ...]:
    return tuple(key.encode() for key in keys)


def matches(token: bytes, keys: tuple[bytes, ...]) -> bool:
    """Whether ``token`` is one of ``keys``; every key is compared, in constant time."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token, key)
    return matched


def key_problem(authorization: bytes | str | None, keys: tuple[bytes, ...]) -> KeyProblem | None:
    """Why the ``Authorization`` value (``Bearer <key>``) is not one of ``keys``, or None when it is."""
    if authorization is None:
        return MISSING
    if isinstance(authorization, str):
        authorization = authorization.encode("latin-1", "replace")
    scheme, _, token = authorization.partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return MALFORMED
    return None if matches(token, keys) else WRONG


def client_address(peer: str | None, forwarded_for: str | None, trusted_proxies: Iterable[str]) -> str:
    """The client's address: the connection's peer, unless the peer is a trusted proxy and says whom it
    forwards for (the right-most address not itself a trusted proxy in ``X-Forwarded-For``)."""
    peer = peer or "unknown"
    trusted = set(trusted_proxies)
    if peer not in trusted or not forwarded_for:
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if hop not in trusted:
            return hop[:64]
    return peer


class AuthThrottle:
    """Wrong keys per client address within a sliding window; past ``max_failures``, a lock-out.

    Bounded: at most ``max_clients`` addresses are remembered (the least recently seen go first), so a
    flood of addresses cannot grow it without limit. Not thread-safe by design: every caller runs on the
    event loop.
    """

    def __init__(
        self,
        max_failures: int = 20,
        window: float = 60.0,
        lockout: float = 60.0,
        max_clients: int = 65536,
        clock: Callable[[], float] = time.monotonic,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self.max_clients = max_clients
        self.clock = clock
        self.on_refused = on_refused
        self._failures: OrderedDict[str, list[float]] = OrderedDict()
        self._locked_until: dict[str, float] = {}

    def retry_after(self, client: str) -> int | None:
        """Seconds ``client`` must wait before its key is looked at again, or None when it may try now.
        A refusal is counted (``on_refused``)."""
        until = self._locked_until.get(client)
        if until is None:
            return None
        left = until - self.clock()
        if left <= 0:
            del self._locked_until[client]
            return None
        if self.on_refused is not None:
            self.on_refused()
        return max(1, int(left + 0.999))

    def failed(self, client: str) -> None:
        """Count one wrong key from ``client``; the one that reaches ``max_failures`` locks it out."""
        now = self.clock()
        times = self._failures.pop(client, [])
        times = [t for t in times if now - t < self.window]
        times.append(now)
        if len(times) >= self.max_failures:
            self._locked_until[client] = now + self.lockout
            times = []
        if times:
            self._failures[client] = times
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)
        if len(self._locked_until) > self.max_clients:
            for stale in [c for c, t in self._locked_until.items() if t <= now]:
                del self._locked_until[stale]
